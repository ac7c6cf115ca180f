//! The gateway driven by `redis-cli`, the Redis reference client, over the in-memory broker:
//! connection commands, authentication, pub/sub, the stream commands with acknowledgements,
//! and the error replies of unknown commands and wrong arity, and of malformed requests
//! against those of redis-server itself.

mod common;

use std::sync::Arc;

use common::{Running, TestGateway, blocking, config, redis_cli, redis_cli_with};
use event_core::memory::MemoryBroker;
use event_gateway::GatewayConfig;

async fn gateway(config: GatewayConfig) -> TestGateway {
    TestGateway::start(Arc::new(MemoryBroker::new()), config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_answer_as_redis_does() {
    let gw = gateway(config()).await;
    let addr = gw.addr;
    blocking(move || {
        assert_eq!(redis_cli(addr, &["PING"]).trim(), "PONG");
        assert_eq!(redis_cli(addr, &["PING", "hi there"]).trim(), "\"hi there\"");
        assert_eq!(redis_cli(addr, &["ECHO", "x y"]).trim(), "\"x y\"");
        assert_eq!(redis_cli(addr, &["SELECT", "0"]).trim(), "OK");
        assert_eq!(
            redis_cli(addr, &["SELECT", "1"]).trim(),
            "(error) ERR DB index is out of range"
        );
        let hello = redis_cli_with(addr, &["-3"], &["HELLO", "3"]);
        assert!(hello.contains("\"proto\" => (integer) 3"), "{hello}");
        assert!(hello.contains("\"server\" => \"event-gateway\""), "{hello}");
        let id: i64 = redis_cli(addr, &["CLIENT", "ID"])
            .trim()
            .trim_start_matches("(integer) ")
            .parse()
            .expect("an integer id");
        assert!(id > 0);
        assert_eq!(redis_cli(addr, &["CLIENT", "GETNAME"]).trim(), "(nil)");
        let unknown = redis_cli(addr, &["FROB", "a", "b"]);
        assert_eq!(
            unknown.trim(),
            "(error) ERR unknown command 'FROB', with args beginning with: 'a' 'b'"
        );
        assert_eq!(
            redis_cli(addr, &["PUBLISH", "only-topic"]).trim(),
            "(error) ERR wrong number of arguments for 'publish' command"
        );
        assert_eq!(
            redis_cli(addr, &["XADD", "t", "5-1", "payload", "x"]).trim(),
            "(error) ERR event-gateway assigns the ids: use * (an explicit id is not kept by the broker; the message id travels as the ce_id field)"
        );
        let count = redis_cli(addr, &["COMMAND", "COUNT"]);
        assert!(count.starts_with("(integer) "), "{count}");
    })
    .await;
    // a session of several commands on one connection, names and all
    let session = blocking(move || {
        let mut command = std::process::Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = command.spawn().expect("redis-cli runs");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"CLIENT SETNAME worker-1\nCLIENT GETNAME\nCLIENT GETNAME\n")
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    })
    .await;
    assert_eq!(
        session.lines().collect::<Vec<_>>(),
        ["OK", "worker-1", "worker-1"],
        "{session}"
    );
    gw.stop().await;
}

/// The redis-server the gateway's replies are compared with: `EVENT_TEST_REDIS`, which
/// `scripts/brokers.sh` starts on 127.0.0.1:6379.
fn reference_redis() -> std::net::SocketAddr {
    std::env::var("EVENT_TEST_REDIS")
        .unwrap_or_else(|_| "127.0.0.1:6379".to_owned())
        .parse()
        .expect("EVENT_TEST_REDIS is host:port")
}

/// The same malformed requests to redis-server itself (`EVENT_TEST_REDIS`, which
/// `scripts/brokers.sh` starts on 127.0.0.1:6379) and to the gateway get the same error
/// replies, and take the same odd values (a negative count or idle time) alike. The key is
/// one no other test makes, deleted from Redis at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_errors_redis_server_gives() {
    let reference = reference_redis();
    let gw = gateway(config()).await;
    let addr = gw.addr;
    blocking(move || {
        assert_eq!(
            redis_cli(reference, &["PING"]).trim(),
            "PONG",
            "redis-server at {reference} (scripts/brokers.sh start redis)"
        );
        let key = format!("event-gateway-test-{}", std::process::id());
        // one request a line, its arguments split at spaces
        let requests = [
            "XREADGROUP GROUP g c BLOCK -1 STREAMS {key} >",
            "XREADGROUP GROUP g c BLOCK soon STREAMS {key} >",
            "XREADGROUP GROUP g c COUNT many STREAMS {key} >",
            "XREADGROUP GROUP g c FOO STREAMS {key} >",
            "XREADGROUP GROUP g c STREAMS {key}",
            "XPENDING {key} g - + many",
            "XPENDING {key} g IDLE long - + 10",
            "XPENDING {key} g IDLE",
            "XPENDING {key} g IDLE 10",
            "XPENDING {key} g IDLE 10 - +",
            "XPENDING {key} g - +",
            "XPENDING {key}",
            "XACK {key} g",
            "XADD {key}",
            "SUBSCRIBE",
            "PING a b",
            "ECHO",
            "AUTH a b c",
        ];
        let same = |request: &str| {
            let request = request.replace("{key}", &key);
            let request: Vec<&str> = request.split(' ').collect();
            let want = redis_cli(reference, &request);
            assert_eq!(redis_cli(addr, &request), want, "{request:?}");
            want
        };
        for request in requests {
            let want = same(request);
            assert!(want.contains("(error) "), "{request}: Redis said {want}");
        }
        // an XACK of no group reads no id: nothing to acknowledge
        assert_eq!(same("XACK {key} g bad-id").trim(), "(integer) 0");
        // and requests Redis takes as they are, on a group of the key (removed after)
        same("XGROUP CREATE {key} g $ MKSTREAM");
        for request in ["XPENDING {key} g - + -1", "XPENDING {key} g IDLE -5 - + 10"] {
            let got = same(request);
            assert!(!got.contains("(error)"), "{request}: {got}");
        }
        // XREADGROUP's options in any order, as Redis takes them; a missing GROUP, and `$`
        for request in [
            "XREADGROUP COUNT 1 GROUP g c STREAMS {key} >",
            "XREADGROUP NOACK COUNT 1 GROUP x y GROUP g c STREAMS {key} >",
        ] {
            let got = same(request);
            assert!(!got.contains("(error)"), "{request}: {got}");
        }
        for request in [
            "XREADGROUP COUNT 1 BLOCK 1 NOACK STREAMS {key} >",
            "XREADGROUP GROUP g c COUNT 1 GROUP STREAMS {key} >",
            "XREADGROUP GROUP g c STREAMS {key} $",
            "XREADGROUP GROUP g c STREAMS {key} > COUNT",
            "XREADGROUP GROUP g c COUNT 1 STREAMS",
            "XREADGROUP GROUP g c NOACK NOACK COUNT",
            "XREADGROUP GROUP g c COUNT 1 BLOCK",
        ] {
            let got = same(request);
            assert!(got.contains("(error)"), "{request}: {got}");
        }
        // the ids of an XACK of a group that is there are read
        assert!(same("XACK {key} g bad-id").contains("(error) "));
        assert_eq!(same("XACK {key} other bad-id").trim(), "(integer) 0");
        assert_eq!(redis_cli(reference, &["DEL", &key]).trim(), "(integer) 1");
    })
    .await;
    gw.stop().await;
}

/// One request on `socket`, in RESP; its reply's bytes, read until they make one whole reply.
fn exchange(socket: &mut std::net::TcpStream, request: &[&str], resp3: bool) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut bytes = format!("*{}\r\n", request.len()).into_bytes();
    for arg in request {
        bytes.extend(format!("${}\r\n{arg}\r\n", arg.len()).into_bytes());
    }
    socket.write_all(&bytes).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let complete = if resp3 {
            redis_protocol::resp3::decode::complete::decode(&reply)
                .is_ok_and(|f| f.is_some_and(|(_, used)| used == reply.len()))
        } else {
            redis_protocol::resp2::decode::decode(&reply)
                .is_ok_and(|f| f.is_some_and(|(_, used)| used == reply.len()))
        };
        if complete {
            return reply;
        }
        let n = socket
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("after {:?}: {e}", String::from_utf8_lossy(&reply)));
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
}

/// Reads that find nothing get the very bytes redis-server sends (RESP2's null array, `*-1`,
/// where a null bulk string would read the same in most clients), in RESP2 and in RESP3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_reads_get_the_bytes_redis_server_sends() {
    let reference = reference_redis();
    let gw = gateway(config()).await;
    let addr = gw.addr;
    blocking(move || {
        let key = format!("event-gateway-empty-{}", std::process::id());
        let connect = |at| {
            let socket = std::net::TcpStream::connect(at)
                .unwrap_or_else(|e| panic!("{at} (scripts/brokers.sh start redis): {e}"));
            // a reply that never completes fails the test instead of hanging it
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            socket
        };
        let (mut redis, mut ours) = (connect(reference), connect(addr));
        let reads: [&[&str]; 3] = [
            &["XPENDING", &key, "g"],
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "COUNT",
                "1",
                "STREAMS",
                &key,
                ">",
            ],
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "10",
                "STREAMS",
                &key,
                ">",
            ],
        ];
        let create = ["XGROUP", "CREATE", &key, "g", "$", "MKSTREAM"];
        assert_eq!(exchange(&mut redis, &create, false), b"+OK\r\n");
        assert_eq!(exchange(&mut ours, &create, false), b"+OK\r\n");
        for resp3 in [false, true] {
            if resp3 {
                exchange(&mut redis, &["HELLO", "3"], true);
                let hello = exchange(&mut ours, &["HELLO", "3"], true);
                // the version of Redis whose replies it gives, as INFO says
                let hello = String::from_utf8_lossy(&hello);
                assert!(
                    hello.contains("$7\r\nversion\r\n$5\r\n7.0.0\r\n"),
                    "{hello}"
                );
            }
            for request in reads {
                let want = exchange(&mut redis, request, resp3);
                assert_eq!(
                    String::from_utf8_lossy(&exchange(&mut ours, request, resp3)),
                    String::from_utf8_lossy(&want),
                    "{request:?}, RESP{}",
                    if resp3 { 3 } else { 2 }
                );
            }
        }
        assert_eq!(redis_cli(reference, &["DEL", &key]).trim(), "(integer) 1");
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_required_before_anything_else() {
    let gw = gateway(config().password("s3cret")).await;
    let addr = gw.addr;
    blocking(move || {
        assert_eq!(
            redis_cli(addr, &["PING"]).trim(),
            "(error) NOAUTH Authentication required."
        );
        assert_eq!(
            redis_cli(addr, &["PUBLISH", "t", "x"]).trim(),
            "(error) NOAUTH Authentication required."
        );
        // redis-cli reports the failed AUTH on stderr and goes on unauthenticated
        let wrong = redis_cli_with(addr, &["-a", "nope", "--no-auth-warning"], &["PING"]);
        assert_eq!(wrong.trim(), "(error) NOAUTH Authentication required.");
        assert_eq!(
            redis_cli(addr, &["AUTH", "nope"]).trim(),
            "(error) WRONGPASS invalid username-password pair or user is disabled."
        );
        assert_eq!(
            redis_cli_with(addr, &["-a", "s3cret", "--no-auth-warning"], &["PING"]).trim(),
            "PONG"
        );
        assert_eq!(
            redis_cli_with(
                addr,
                &["--user", "default", "--pass", "s3cret", "--no-auth-warning"],
                &["PING"]
            )
            .trim(),
            "PONG"
        );
        // HELLO with AUTH authenticates and switches protocol at once
        let hello = redis_cli(addr, &["HELLO", "3", "AUTH", "default", "s3cret"]);
        assert!(hello.contains("proto"), "{hello}");
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_a_subscribed_redis_cli() {
    let gw = gateway(config()).await;
    let port = gw.port();
    let mut subscriber = Running::spawn(
        "redis-cli",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--no-raw",
            "SUBSCRIBE",
            "news",
            "alerts",
        ],
        "redis-cli SUBSCRIBE",
    );
    let confirmations = blocking(move || {
        let mut first = subscriber.line();
        while first.starts_with("Reading messages") {
            first = subscriber.line();
        }
        let lines: Vec<String> = std::iter::once(first)
            .chain((0..5).map(|_| subscriber.line()))
            .collect();
        (subscriber, lines)
    })
    .await;
    let (mut subscriber, lines) = confirmations;
    assert_eq!(
        lines,
        [
            "1) \"subscribe\"",
            "2) \"news\"",
            "3) (integer) 1",
            "1) \"subscribe\"",
            "2) \"alerts\"",
            "3) (integer) 2"
        ]
    );
    let addr = gw.addr;
    let (subscriber, published) = blocking(move || {
        let published = redis_cli(addr, &["PUBLISH", "news", "hello world"]);
        let lines: Vec<String> = (0..3).map(|_| subscriber.line()).collect();
        assert_eq!(
            lines,
            ["1) \"message\"", "2) \"news\"", "3) \"hello world\""]
        );
        (subscriber, published)
    })
    .await;
    assert_eq!(published.trim(), "(integer) 1");
    drop(subscriber);
    gw.stop().await;
}

/// What one `XREADGROUP` printed: the ids and payloads, in order.
fn entries(output: &str) -> Vec<(String, String)> {
    // redis-cli prints `1) 1) "topic"  2) 1) 1) "<id>"  2) 1) "payload"  2) "<bytes>" ...`
    let quoted: Vec<&str> = output
        .lines()
        .filter_map(|line| {
            line.split_once('"')
                .map(|(_, rest)| rest.trim_end_matches('"'))
        })
        .collect();
    let mut out = Vec::new();
    for (i, word) in quoted.iter().enumerate() {
        if *word == "payload" && i >= 1 {
            out.push((quoted[i - 1].to_owned(), quoted[i + 1].to_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xadd_xreadgroup_xack_with_two_consumers() {
    // one command per connection, as redis-cli is used from scripts: what a consumer read
    // stays its own after its connection ended (the reclaim delay), so a later XACK counts
    let gw = gateway(config().reclaim_after(std::time::Duration::from_secs(30))).await;
    let addr = gw.addr;
    blocking(move || {
        assert_eq!(redis_cli(addr, &["XGROUP", "CREATE", "orders", "billing", "$", "MKSTREAM"]).trim(), "OK");
        assert_eq!(
            redis_cli(addr, &["XGROUP", "CREATE", "orders", "billing", "$"]).trim(),
            "(error) BUSYGROUP Consumer Group name already exists"
        );
        for n in 0..3 {
            let id = redis_cli(addr, &["XADD", "orders", "*", "payload", &format!("order-{n}"), "tenant", "acme"]);
            assert!(id.trim().trim_matches('"').split_once('-').is_some(), "an id: {id}");
        }
        let first = redis_cli(addr, &["XREADGROUP", "GROUP", "billing", "alice", "COUNT", "2", "STREAMS", "orders", ">"]);
        let read = entries(&first);
        assert_eq!(read.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(), ["order-0", "order-1"], "{first}");
        assert!(first.contains("\"tenant\"") && first.contains("\"acme\""), "fields come back: {first}");
        assert!(first.contains("\"ce_id\""), "headers come back as fields: {first}");
        let pending = redis_cli(addr, &["XPENDING", "orders", "billing"]);
        assert!(pending.starts_with("1) (integer) 2"), "{pending}");
        assert!(pending.contains("\"alice\"") && pending.contains("\"2\""), "{pending}");
        let second = redis_cli(addr, &["XREADGROUP", "GROUP", "billing", "bob", "STREAMS", "orders", ">"]);
        let read_by_bob = entries(&second);
        assert_eq!(read_by_bob.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>(), ["order-2"], "{second}");
        // alice's own history, on a new connection
        let history = redis_cli(addr, &["XREADGROUP", "GROUP", "billing", "alice", "STREAMS", "orders", "0"]);
        assert_eq!(entries(&history), read, "{history}");
        // paging through the pending entries as Redis's docs do: `(` after the last id seen
        let all: Vec<&str> = read.iter().chain(&read_by_bob).map(|(id, _)| id.as_str()).collect();
        let mut paged = Vec::new();
        let mut start = "-".to_owned();
        loop {
            let page = redis_cli(addr, &["XPENDING", "orders", "billing", &start, "+", "1"]);
            let Some(id) = page.lines().find_map(|l| l.split_once("1) \"").map(|(_, id)| id.trim_end_matches('"').to_owned())) else {
                break;
            };
            assert!(paged.len() < all.len(), "paging does not end: {paged:?} then {page}");
            start = format!("({id}");
            paged.push(id);
        }
        assert_eq!(paged, all, "each pending entry once, in order");
        // an end id without a sequence covers its whole millisecond
        let last_ms = all[2].split_once('-').map(|(ms, _)| ms).unwrap();
        let upto = redis_cli(addr, &["XPENDING", "orders", "billing", "-", last_ms, "10"]);
        assert!(upto.contains(all[2]), "{last_ms} covers {}: {upto}", all[2]);
        let mut ids = all.clone();
        ids.push("1-1"); // not pending: not counted
        let mut ack = vec!["XACK", "orders", "billing"];
        ack.extend(ids);
        assert_eq!(redis_cli(addr, &ack).trim(), "(integer) 3");
        let pending = redis_cli(addr, &["XPENDING", "orders", "billing"]);
        assert!(pending.starts_with("1) (integer) 0"), "{pending}");
        // nothing is left for anyone
        assert_eq!(
            redis_cli(addr, &["XREADGROUP", "GROUP", "billing", "carol", "STREAMS", "orders", ">"]).trim(),
            "(nil)"
        );
        assert_eq!(
            redis_cli(addr, &["XPENDING", "orders", "nogroup"]).trim(),
            "(error) NOGROUP No such key 'orders' or consumer group 'nogroup' (create it with XGROUP CREATE, or read from it with XREADGROUP)"
        );
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_xreadgroup_wakes_up_on_xadd() {
    let gw = gateway(config()).await;
    let addr = gw.addr;
    let port = gw.port();
    blocking(move || {
        assert_eq!(
            redis_cli(addr, &["XGROUP", "CREATE", "jobs", "w", "$"]).trim(),
            "OK"
        );
    })
    .await;
    let mut reader = Running::spawn(
        "redis-cli",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--no-raw",
            "XREADGROUP",
            "GROUP",
            "w",
            "c",
            "BLOCK",
            "0",
            "STREAMS",
            "jobs",
            ">",
        ],
        "redis-cli XREADGROUP BLOCK 0",
    );
    blocking(move || {
        // INFO counts the connections waiting in a blocking command, as Redis does
        while !redis_cli(addr, &["INFO"]).contains("blocked_clients:1") {
            std::thread::yield_now();
        }
        redis_cli(addr, &["XADD", "jobs", "*", "payload", "job-1"]);
        let output: Vec<String> = (0..6).map(|_| reader.line()).collect();
        let text = output.join("\n");
        assert!(
            text.contains("\"jobs\"") && text.contains("\"job-1\""),
            "{text}"
        );
        reader.finish();
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_redis_cli_session_held_goes_to_the_next_reader() {
    let gw = gateway(config()).await;
    let addr = gw.addr;
    let port = gw.port();
    blocking(move || {
        assert_eq!(
            redis_cli(addr, &["XGROUP", "CREATE", "tasks", "g", "$"]).trim(),
            "OK"
        );
        for n in 0..6 {
            redis_cli(
                addr,
                &["XADD", "tasks", "*", "payload", &format!("task-{n}")],
            );
        }
        // an interactive session reads four and is killed before it acknowledges them
        let mut session = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli runs");
        use std::io::{BufRead as _, Write as _};
        let mut stdin = session.stdin.take().unwrap();
        stdin
            .write_all(b"XREADGROUP GROUP g victim COUNT 4 STREAMS tasks >\n")
            .unwrap();
        stdin.flush().unwrap();
        let mut lines = std::io::BufReader::new(session.stdout.take().unwrap()).lines();
        let mut held = Vec::new();
        while held.len() < 4 {
            let line = lines.next().expect("output").expect("text");
            if line.starts_with("task-") {
                held.push(line);
            }
        }
        let pending = redis_cli(addr, &["XPENDING", "tasks", "g"]);
        assert!(pending.starts_with("1) (integer) 4"), "{pending}");
        session.kill().unwrap();
        session.wait().unwrap();
        // the next reader gets what the session held, then the rest: all six. It acknowledges
        // what each read brought (one connection per command: what it left unacknowledged
        // would go back to the group after the reclaim delay, and come again)
        let mut read = Vec::new();
        while read.len() < 6 {
            let out = redis_cli(
                addr,
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "next",
                    "BLOCK",
                    "5000",
                    "STREAMS",
                    "tasks",
                    ">",
                ],
            );
            let got = entries(&out);
            if !got.is_empty() {
                let mut ack = vec!["XACK", "tasks", "g"];
                ack.extend(got.iter().map(|(id, _)| id.as_str()));
                assert_eq!(
                    redis_cli(addr, &ack).trim(),
                    format!("(integer) {}", got.len())
                );
            }
            read.extend(got.into_iter().map(|(_, payload)| payload));
        }
        read.sort();
        assert_eq!(
            read,
            (0..6).map(|n| format!("task-{n}")).collect::<Vec<_>>()
        );
        for task in held {
            assert!(read.contains(&task));
        }
    })
    .await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_cases_of_the_stream_commands() {
    let gw = gateway(config()).await;
    let addr = gw.addr;
    let port = gw.port();
    blocking(move || {
        assert_eq!(
            redis_cli(addr, &["XGROUP", "CREATE", "q", "g", "$"]).trim(),
            "OK"
        );
        // a range the wrong way round holds nothing
        assert_eq!(
            redis_cli(addr, &["XPENDING", "q", "g", "+", "-", "10"]).trim(),
            "(empty array)"
        );
        // without a password configured, HELLO ... AUTH passes, as with Redis' default user
        let hello = redis_cli(addr, &["HELLO", "3", "AUTH", "default", "anything"]);
        assert!(hello.contains("proto"), "{hello}");
        // a reader blocked on a group that is destroyed learns it
        let mut reader = Running::spawn(
            "redis-cli",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "--no-raw",
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "0",
                "STREAMS",
                "q",
                ">",
            ],
            "redis-cli XREADGROUP BLOCK 0",
        );
        while !redis_cli(addr, &["INFO"]).contains("blocked_clients:1") {
            std::thread::yield_now();
        }
        assert_eq!(
            redis_cli(addr, &["XGROUP", "DESTROY", "q", "g"]).trim(),
            "(integer) 1"
        );
        let line = reader.line();
        assert!(line.contains("NOGROUP"), "{line}");
        reader.finish();
    })
    .await;
    gw.stop().await;
}

/// `--max-groups`: a group beyond the limit is refused, by `XGROUP CREATE` and by the first
/// `XREADGROUP` of a group the gateway has not joined; destroying one makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_beyond_the_limit_are_refused() {
    let gw = gateway(config().max_groups(1)).await;
    let addr = gw.addr;
    blocking(move || {
        let create = |group: &str| redis_cli(addr, &["XGROUP", "CREATE", "jobs", group, "$"]);
        assert_eq!(create("a").trim(), "OK");
        let refused = "(error) ERR cannot join group b of jobs: the gateway already serves 1 \
                       groups (--max-groups); XGROUP DESTROY one it no longer needs";
        assert_eq!(create("b").trim(), refused);
        assert_eq!(
            redis_cli(
                addr,
                &["XREADGROUP", "GROUP", "b", "x", "STREAMS", "jobs", ">"]
            )
            .trim(),
            refused
        );
        // the group already joined is served as before
        assert_eq!(
            redis_cli(
                addr,
                &["XREADGROUP", "GROUP", "a", "x", "STREAMS", "jobs", ">"]
            )
            .trim(),
            "(nil)"
        );
        assert_eq!(
            redis_cli(addr, &["XGROUP", "DESTROY", "jobs", "a"]).trim(),
            "(integer) 1"
        );
        assert_eq!(create("b").trim(), "OK");
    })
    .await;
    gw.stop().await;
}
