//! The commands: what each does with its arguments.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use event_core::broker::{
    Message, Outcome, PublishError, StartFrom, SubscribeOptions, TryPublish, handler_fn,
    validate_topic,
};
use event_core::headers::{HeaderName, HeaderValue, names};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::Instrument;

use crate::connection::{Connection, Flow, Interrupted, Subscribed};
use crate::frame::{Protocol, Reply};
use crate::groups::{Group, INVALID_ID, JoinSettings, PendingSummary, Read, StreamId};

/// The commands served, with their Redis arity (negative: at least that many) and the
/// `COMMAND` flags.
const COMMANDS: &[(&str, i64, &[&str])] = &[
    ("ping", -1, &["fast", "stale"]),
    ("echo", 2, &["fast"]),
    ("hello", -1, &["noauth", "fast", "no-auth"]),
    ("auth", -2, &["noauth", "fast", "no-auth"]),
    ("select", 2, &["fast"]),
    ("client", -2, &[]),
    ("quit", -1, &["noauth", "fast"]),
    ("reset", 1, &["noauth", "fast"]),
    ("command", -1, &["loading", "stale"]),
    ("config", -2, &[]),
    ("info", -1, &["loading", "stale"]),
    ("publish", 3, &["pubsub", "fast"]),
    ("subscribe", -2, &["pubsub", "noscript"]),
    ("unsubscribe", -1, &["pubsub", "noscript"]),
    ("xadd", -5, &["write", "fast"]),
    ("xgroup", -2, &["write"]),
    ("xreadgroup", -7, &["write", "blocking"]),
    ("xack", -4, &["write", "fast"]),
    ("xpending", -3, &["readonly"]),
];

/// The Redis version whose replies the gateway gives (`HELLO`'s `version`, `INFO`'s
/// `redis_version`).
const REDIS_VERSION: &str = "7.0.0";

/// Commands a RESP2 connection may send while it has subscriptions.
const IN_SUBSCRIBE_MODE: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
    "ping",
    "quit",
    "reset",
];

fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn int_arg(arg: &Bytes) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

fn is(arg: &Bytes, word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

fn text(arg: &Bytes) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

/// An error and its sources, joined: the reason a client gets.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !out.contains(&cause_text) {
            out.push_str(": ");
            out.push_str(&cause_text);
        }
        source = cause.source();
    }
    out
}

impl Connection {
    /// Runs one request.
    pub(crate) async fn execute(&mut self, args: Vec<Bytes>) -> Flow {
        let known = COMMANDS
            .iter()
            .find(|(name, _, _)| args[0].eq_ignore_ascii_case(name.as_bytes()));
        let label = known.map_or("unknown", |(name, _, _)| *name);
        metrics::counter!("event_gateway_commands_total", "command" => label).increment(1);
        let span = tracing::debug_span!("gateway.command", client = self.id, command = label);
        // entered for each poll only when someone listens: the wrapper costs on every command
        let reply = if span.is_disabled() {
            self.dispatch(known, args).await
        } else {
            self.dispatch(known, args).instrument(span).await
        };
        match reply {
            Some(Ok(reply)) => {
                if reply.is_error() {
                    metrics::counter!("event_gateway_command_errors_total", "command" => label)
                        .increment(1);
                }
                if !self.settle_in_flight().await {
                    return Flow::Close;
                }
                self.reply(reply);
                Flow::Continue
            }
            Some(Err(Close(reply))) => {
                if self.settle_in_flight().await
                    && let Some(reply) = reply
                {
                    self.reply(reply);
                }
                Flow::Close
            }
            // queued behind the replies owed
            None => Flow::Continue,
        }
    }

    async fn dispatch(
        &mut self,
        known: Option<&(&str, i64, &[&str])>,
        args: Vec<Bytes>,
    ) -> Option<Result<Reply, Close>> {
        let Some((name, arity, flags)) = known else {
            let mut text = format!(
                "unknown command '{}', with args beginning with:",
                self::text(&args[0])
            );
            for arg in args.iter().skip(1).take(8) {
                text.push_str(&format!(" '{}'", self::text(arg)));
            }
            let lower = self::text(&args[0]).to_ascii_lowercase();
            if lower.starts_with('x') || lower.ends_with("subscribe") {
                text.push_str(" (event-gateway serves PUBLISH, SUBSCRIBE, UNSUBSCRIBE, XADD, XGROUP, XREADGROUP, XACK and XPENDING)");
            }
            return Some(Ok(Reply::err(text)));
        };
        let count = args.len() as i64;
        if (*arity > 0 && count != *arity) || (*arity < 0 && count < -arity) {
            return Some(Ok(wrong_arity(name)));
        }
        if !self.authenticated && !flags.contains(&"noauth") {
            return Some(Ok(Reply::Error(
                "NOAUTH Authentication required.".to_owned(),
            )));
        }
        if self.protocol == Protocol::Resp2
            && !self.subscriptions.is_empty()
            && !IN_SUBSCRIBE_MODE.contains(name)
        {
            return Some(Ok(Reply::err(format!(
                "Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            ))));
        }
        // the publishes answer later; everything else sees what came before it
        match *name {
            "publish" | "xadd" => {
                let bytes = args.iter().map(Bytes::len).sum();
                let later = match self.publish(name, args) {
                    Ok(Published::Now(reply)) if self.nothing_owed() => return Some(Ok(reply)),
                    Ok(Published::Now(reply)) => std::future::ready(reply).boxed(),
                    Ok(Published::Later(reply)) => reply,
                    Err(reply) => return Some(Ok(reply)),
                };
                // in request order: the ordered queue polls them in the order pushed
                return if self.reply_later(later, bytes).await {
                    None
                } else {
                    Some(Err(Close(None)))
                };
            }
            _ => {
                if !self.settle_in_flight().await {
                    return Some(Err(Close(None)));
                }
            }
        }
        let reply = match *name {
            "ping" => self.ping(&args),
            "echo" => Reply::Bulk(args[1].clone()),
            "hello" => self.hello(&args),
            "auth" => self.auth(&args),
            "select" => match int_arg(&args[1]) {
                Some(0) => Reply::OK,
                Some(_) => Reply::err("DB index is out of range"),
                None => not_integer(),
            },
            "client" => self.client(&args),
            "quit" => return Some(Err(Close(Some(Reply::OK)))),
            "reset" => self.reset(),
            "command" => command(&args),
            "config" => config(&args),
            "info" => self.info(),
            "subscribe" => return self.subscribe(&args).await.map(Ok),
            "unsubscribe" => return self.unsubscribe(&args).map(Ok),
            "xgroup" => self.xgroup(&args).await,
            "xreadgroup" => return self.xreadgroup(&args).await,
            "xack" => self.xack(&args),
            "xpending" => self.xpending(&args),
            other => Reply::err(format!("command '{other}' is not served")),
        };
        Some(Ok(reply))
    }

    fn ping(&self, args: &[Bytes]) -> Reply {
        if args.len() > 2 {
            return wrong_arity("ping");
        }
        let message = args.get(1).cloned();
        if self.protocol == Protocol::Resp2 && !self.subscriptions.is_empty() {
            return Reply::Array(vec![
                Reply::bulk_static("pong"),
                Reply::Bulk(message.unwrap_or_default()),
            ]);
        }
        match message {
            Some(message) => Reply::Bulk(message),
            None => Reply::Simple("PONG"),
        }
    }

    fn check_password(&mut self, user: Option<&Bytes>, password: &Bytes) -> Result<(), Reply> {
        let Some(expected) = &self.shared.config.password else {
            // as Redis' default user without a password: any password passes, except that
            // `AUTH <password>` alone is taken for a configuration mistake
            return match user {
                Some(_) => Ok(()),
                None => Err(Reply::err(
                    "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                )),
            };
        };
        let user_ok = user.is_none_or(|u| is(u, "default"));
        if user_ok && password.as_ref() == expected.as_bytes() {
            self.authenticated = true;
            Ok(())
        } else {
            tracing::info!("authentication failed");
            metrics::counter!("event_gateway_auth_failures_total").increment(1);
            Err(Reply::Error(
                "WRONGPASS invalid username-password pair or user is disabled.".to_owned(),
            ))
        }
    }

    fn auth(&mut self, args: &[Bytes]) -> Reply {
        let result = match args.len() {
            2 => self.check_password(None, &args[1]),
            3 => self.check_password(Some(&args[1]), &args[2]),
            _ => return syntax(),
        };
        match result {
            Ok(()) => Reply::OK,
            Err(reply) => reply,
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Reply {
        let mut protocol = self.protocol;
        if let Some(version) = args.get(1) {
            protocol = match int_arg(version) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return Reply::Error("NOPROTO unsupported protocol version".to_owned()),
                None => return Reply::err("Protocol version is not an integer or out of range"),
            };
        }
        let mut rest = args.iter().skip(2);
        let mut name = None;
        while let Some(option) = rest.next() {
            if is(option, "auth") {
                let (Some(user), Some(password)) = (rest.next(), rest.next()) else {
                    return syntax();
                };
                if let Err(reply) = self.check_password(Some(user), password) {
                    return reply;
                }
            } else if is(option, "setname") {
                let Some(value) = rest.next() else {
                    return syntax();
                };
                name = Some(value.clone());
            } else {
                return Reply::err(format!("Syntax error in HELLO option '{}'", text(option)));
            }
        }
        if !self.authenticated {
            return Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".to_owned(),
            );
        }
        if name.is_some() {
            self.name = name;
        }
        self.protocol = protocol;
        Reply::Map(vec![
            (
                Reply::bulk_static("server"),
                Reply::bulk_static("event-gateway"),
            ),
            // the Redis version whose commands it answers, as `INFO` says: clients that decide
            // what to send by the version (RESP3, stream options) read it here
            (
                Reply::bulk_static("version"),
                Reply::bulk_static(REDIS_VERSION),
            ),
            (
                Reply::bulk_static("event_gateway_version"),
                Reply::bulk_static(env!("CARGO_PKG_VERSION")),
            ),
            (
                Reply::bulk_static("proto"),
                Reply::Int(if protocol == Protocol::Resp3 { 3 } else { 2 }),
            ),
            (Reply::bulk_static("id"), Reply::Int(self.id as i64)),
            (Reply::bulk_static("mode"), Reply::bulk_static("standalone")),
            (Reply::bulk_static("role"), Reply::bulk_static("master")),
            (Reply::bulk_static("modules"), Reply::Array(Vec::new())),
            (
                Reply::bulk_static("broker"),
                Reply::text(self.shared.broker.name()),
            ),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Reply {
        let sub = &args[1];
        if is(sub, "setname") {
            match args.get(2) {
                Some(name) if args.len() == 3 => {
                    if name.iter().any(|b| *b <= b' ' || *b > b'~') {
                        return Reply::err(
                            "Client names cannot contain spaces, newlines or special characters.",
                        );
                    }
                    self.name = (!name.is_empty()).then(|| name.clone());
                    Reply::OK
                }
                _ => wrong_arity("client|setname"),
            }
        } else if is(sub, "getname") {
            self.name.clone().map_or(Reply::Null, Reply::Bulk)
        } else if is(sub, "id") {
            Reply::Int(self.id as i64)
        } else if is(sub, "setinfo") {
            if args.len() == 4 {
                Reply::OK
            } else {
                wrong_arity("client|setinfo")
            }
        } else {
            Reply::err(format!(
                "unknown subcommand '{}' of CLIENT: event-gateway serves SETNAME, GETNAME, ID and SETINFO",
                text(sub)
            ))
        }
    }

    fn reset(&mut self) -> Reply {
        // what this connection's consumers hold stays theirs, as in Redis (RESET leaves the
        // pending entries alone): it goes back only when the connection ends
        self.subscriptions.clear();
        self.protocol = Protocol::Resp2;
        self.name = None;
        self.authenticated = self.shared.config.password.is_none();
        Reply::Simple("RESET")
    }

    fn info(&self) -> Reply {
        let shared = &self.shared;
        let groups = shared.groups.all();
        Reply::text(format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nevent_gateway_version:{}\r\nredis_mode:standalone\r\n\r\n# Clients\r\nconnected_clients:{}\r\nblocked_clients:{}\r\n\r\n# Broker\r\nbroker:{}\r\nbroker_address:{}\r\ngroups:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            shared.connected.load(std::sync::atomic::Ordering::Relaxed),
            shared.blocked.load(std::sync::atomic::Ordering::Relaxed),
            shared.broker.name(),
            shared.broker.address(),
            groups.len(),
        ))
    }

    /// `PUBLISH topic payload` and `XADD topic * payload <bytes> field value ...`: checked and
    /// handed to the broker now, answered when the broker has answered.
    fn publish(&mut self, name: &str, args: Vec<Bytes>) -> Result<Published, Reply> {
        let topic = text(&args[1]);
        validate_topic(&topic).map_err(|error| Reply::err(describe(&error)))?;
        let (mut message, id) = if name == "publish" {
            (Message::new(args[2].clone()), None)
        } else {
            (xadd_message(&args)?, Some(self.shared.next_id()))
        };
        self.shared
            .config
            .typed
            .admit(&topic, &mut message)
            .map_err(|error| {
                metrics::counter!("event_gateway_refused_total").increment(1);
                Reply::err(format!(
                    "refused, nothing published: {}",
                    crate::typed::explain(&error)
                ))
            })?;
        stamp(&mut message, &self.shared.source);
        let answer = move |result: Result<_, PublishError>| match result {
            Ok(_) => match id {
                Some(id) => Reply::text(id.to_string()),
                None => Reply::Int(1),
            },
            Err(error) => Reply::err(describe(&error)),
        };
        // a broker that takes the message without waiting (the memory broker with room)
        // answers now, without a future to keep
        let message = match self.shared.broker.try_publish(&topic, message) {
            TryPublish::Done(result) => return Ok(Published::Now(answer(result))),
            TryPublish::WouldWait(message) => message,
        };
        let broker = self.shared.broker.clone();
        Ok(Published::Later(
            async move {
                let result = broker.publish(&topic, message).await;
                answer(result)
            }
            .boxed(),
        ))
    }

    async fn subscribe(&mut self, args: &[Bytes]) -> Option<Reply> {
        for topic in &args[1..] {
            if !self.subscriptions.contains_key(topic) {
                let name = text(topic);
                if let Err(error) = validate_topic(&name) {
                    self.reply(Reply::err(describe(&error)));
                    continue;
                }
                if !Subscribed::reserve(&self.shared) {
                    let max = self.shared.config.max_subscriptions;
                    self.reply(Reply::err(format!(
                        "cannot subscribe to {name}: the gateway's connections already hold {max} \
                         subscriptions (--max-subscriptions)"
                    )));
                    continue;
                }
                let sender = self.push_sender.clone();
                let key = topic.clone();
                let generation = self.next_generation;
                self.next_generation += 1;
                let handler = handler_fn(
                    format!("event-gateway:subscribe:{}", self.id),
                    move |delivery| {
                        let sender = sender.clone();
                        let key = key.clone();
                        async move {
                            // a full buffer slows this subscription down, nothing else; a closed
                            // connection no longer wants anything (at most once while connected)
                            let _ = sender
                                .send((generation, key, delivery.payload().clone()))
                                .await;
                            Outcome::Ack
                        }
                    },
                );
                let options = SubscribeOptions::new().start_from(StartFrom::Latest);
                match self.shared.broker.subscribe(&name, options, handler).await {
                    Ok(subscription) => {
                        let subscribed = Subscribed::new(subscription, self.shared.clone());
                        self.subscriptions
                            .insert(topic.clone(), (generation, subscribed));
                    }
                    Err(error) => {
                        Subscribed::unreserve(&self.shared);
                        self.reply(Reply::err(format!(
                            "cannot subscribe to {name}: {}",
                            describe(&error)
                        )));
                        continue;
                    }
                }
            }
            let count = self.subscriptions.len() as i64;
            self.reply(Reply::Push(vec![
                Reply::bulk_static("subscribe"),
                Reply::Bulk(topic.clone()),
                Reply::Int(count),
            ]));
        }
        None
    }

    fn unsubscribe(&mut self, args: &[Bytes]) -> Option<Reply> {
        let topics: Vec<Bytes> = if args.len() > 1 {
            args[1..].to_vec()
        } else {
            self.subscriptions.keys().cloned().collect()
        };
        if topics.is_empty() {
            return Some(Reply::Push(vec![
                Reply::bulk_static("unsubscribe"),
                Reply::Null,
                Reply::Int(0),
            ]));
        }
        for topic in topics {
            // dropped: it stops and drains in the background
            self.subscriptions.remove(&topic);
            let count = self.subscriptions.len() as i64;
            self.reply(Reply::Push(vec![
                Reply::bulk_static("unsubscribe"),
                Reply::Bulk(topic),
                Reply::Int(count),
            ]));
        }
        None
    }

    async fn xgroup(&mut self, args: &[Bytes]) -> Reply {
        let sub = &args[1];
        if is(sub, "create") {
            if args.len() < 5 {
                return wrong_arity("xgroup|create");
            }
            let (topic, group, id) = (text(&args[2]), text(&args[3]), &args[4]);
            let start = if id.as_ref() == b"$" {
                StartFrom::Latest
            } else if matches!(id.as_ref(), b"0" | b"0-0") {
                StartFrom::Earliest
            } else {
                return Reply::err(format!(
                    "XGROUP CREATE takes $ (new messages) or 0 (from the start of what the broker keeps), not {}: the broker's positions are not stream ids",
                    text(id)
                ));
            };
            let mut rest = args[5..].iter();
            while let Some(option) = rest.next() {
                if is(option, "mkstream") {
                } else if is(option, "entriesread") {
                    if rest.next().is_none() {
                        return syntax();
                    }
                } else {
                    return syntax();
                }
            }
            match self.join(&topic, &group, start).await {
                Ok((_, true)) => Reply::OK,
                Ok((_, false)) => {
                    Reply::Error("BUSYGROUP Consumer Group name already exists".to_owned())
                }
                Err(reply) => reply,
            }
        } else if is(sub, "destroy") {
            if args.len() != 4 {
                return wrong_arity("xgroup|destroy");
            }
            let destroyed = self
                .shared
                .groups
                .destroy(&text(&args[2]), &text(&args[3]))
                .await;
            Reply::Int(i64::from(destroyed))
        } else if is(sub, "createconsumer") || is(sub, "delconsumer") {
            if args.len() != 5 {
                return wrong_arity("xgroup|createconsumer");
            }
            let Some(group) = self.shared.groups.get(&text(&args[2]), &text(&args[3])) else {
                return no_group(&args[2], &args[3]);
            };
            let consumer = text(&args[4]);
            if is(sub, "createconsumer") {
                Reply::Int(i64::from(group.create_consumer(&consumer)))
            } else {
                Reply::Int(group.delete_consumer(&consumer) as i64)
            }
        } else {
            Reply::err(format!(
                "unknown subcommand '{}' of XGROUP: event-gateway serves CREATE, DESTROY, CREATECONSUMER and DELCONSUMER",
                text(sub)
            ))
        }
    }

    async fn join(
        &mut self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<(Arc<Group>, bool), Reply> {
        validate_topic(topic).map_err(|error| Reply::err(describe(&error)))?;
        let max = self.shared.config.max_groups;
        if self.shared.groups.get(topic, group).is_none() && self.shared.groups.count() >= max {
            return Err(Reply::err(format!(
                "cannot join group {group} of {topic}: the gateway already serves {max} groups \
                 (--max-groups); XGROUP DESTROY one it no longer needs"
            )));
        }
        let settings = JoinSettings {
            window: self.shared.config.group_window,
            drain_timeout: self.shared.config.drain_timeout,
        };
        self.shared
            .groups
            .join(&self.shared.broker, topic, group, start, settings)
            .await
            .map_err(|error| {
                Reply::err(format!(
                    "cannot join group {group} of {topic}: {}",
                    describe(&error)
                ))
            })
    }

    async fn xreadgroup(&mut self, args: &[Bytes]) -> Option<Result<Reply, Close>> {
        let parsed = match parse_xreadgroup(args) {
            Ok(parsed) => parsed,
            Err(reply) => return Some(Ok(reply)),
        };
        let consumer: Arc<str> = Arc::from(parsed.consumer.as_str());
        let mut groups = Vec::with_capacity(parsed.streams.len());
        for (topic, _) in &parsed.streams {
            // a group this gateway has not joined (another gateway, or before a restart,
            // created it) is joined now: the broker's group remembers where it was
            let group = match self.shared.groups.get(topic, &parsed.group) {
                Some(group) => group,
                None => match self.join(topic, &parsed.group, StartFrom::Latest).await {
                    Ok((group, _)) => group,
                    Err(reply) => return Some(Ok(reply)),
                },
            };
            self.touch(&group);
            groups.push(group);
        }
        let history = parsed.streams.iter().any(|(_, id)| id.is_some());
        let deadline = parsed
            .block
            .map(|ms| (ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(ms)));
        loop {
            // made before looking, so that a message offered after the look wakes the wait
            let offered: Vec<_> = groups.iter().map(|g| Box::pin(g.offered())).collect();
            // destroyed meanwhile (XGROUP DESTROY): as Redis answers a blocked reader
            if let Some((topic, _)) = groups
                .iter()
                .zip(&parsed.streams)
                .find_map(|(g, (topic, _))| g.is_closed().then_some((topic, ())))
            {
                return Some(Ok(Reply::Error(format!(
                    "NOGROUP the consumer group {} of {topic} was destroyed while this reader waited",
                    parsed.group
                ))));
            }
            let mut found = Vec::new();
            for (group, (topic, after)) in groups.iter().zip(&parsed.streams) {
                let reads = match after {
                    None => group.read(&consumer, self.id, parsed.count, parsed.no_ack),
                    Some(after) => group.history(&consumer, self.id, *after, parsed.count),
                };
                if !reads.is_empty() || after.is_some() {
                    found.push((topic.clone(), reads));
                }
            }
            if !found.is_empty() || history {
                return Some(Ok(self.streams_reply(found)));
            }
            let Some(deadline) = deadline else {
                return Some(Ok(Reply::NullArray));
            };
            let woken = futures_util::future::select_all(offered);
            let waited = match deadline {
                Some(deadline) => {
                    let timed = tokio::time::timeout_at(deadline, woken);
                    match self.wait_for(timed).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(_)) => return Some(Ok(Reply::NullArray)),
                        Err(interrupted) => interrupted,
                    }
                }
                None => match self.wait_for(woken).await {
                    Ok(_) => continue,
                    Err(interrupted) => interrupted,
                },
            };
            return match waited {
                Interrupted::Closed => Some(Err(Close(None))),
                // a blocked read of a stopping gateway times out, as if nothing came
                Interrupted::Stopping => Some(Ok(Reply::NullArray)),
            };
        }
    }

    fn streams_reply(&self, found: Vec<(String, Vec<Read>)>) -> Reply {
        let streams = found.into_iter().map(|(topic, reads)| {
            let entries = reads
                .into_iter()
                .map(|read| Reply::Array(vec![Reply::text(read.id.to_string()), fields(&read)]))
                .collect();
            (Reply::text(topic), Reply::Array(entries))
        });
        match self.protocol {
            Protocol::Resp3 => Reply::Map(streams.collect()),
            Protocol::Resp2 => {
                Reply::Array(streams.map(|(k, v)| Reply::Array(vec![k, v])).collect())
            }
        }
    }

    fn xack(&mut self, args: &[Bytes]) -> Reply {
        // as Redis does: no group (or no key), nothing to acknowledge, whatever the ids say;
        // the ids are read only for a group that is there
        let Some(group) = self.shared.groups.get(&text(&args[1]), &text(&args[2])) else {
            return Reply::Int(0);
        };
        let mut ids = Vec::with_capacity(args.len() - 3);
        for arg in &args[3..] {
            match StreamId::parse(arg) {
                Some(id) => ids.push(id),
                None => return Reply::err(INVALID_ID),
            }
        }
        Reply::Int(group.ack(&ids) as i64)
    }

    fn xpending(&mut self, args: &[Bytes]) -> Reply {
        // the arguments are read before the group is looked up, as Redis does
        let group = || self.shared.groups.get(&text(&args[1]), &text(&args[2]));
        if args.len() == 3 {
            let Some(group) = group() else {
                return no_group(&args[1], &args[2]);
            };
            let PendingSummary {
                count,
                range,
                consumers,
            } = group.pending_summary();
            let Some((low, high)) = range else {
                return Reply::Array(vec![
                    Reply::Int(0),
                    Reply::Null,
                    Reply::Null,
                    Reply::NullArray,
                ]);
            };
            return Reply::Array(vec![
                Reply::Int(count as i64),
                Reply::text(low.to_string()),
                Reply::text(high.to_string()),
                Reply::Array(
                    consumers
                        .into_iter()
                        .map(|(name, n)| {
                            Reply::Array(vec![Reply::text(&*name), Reply::text(n.to_string())])
                        })
                        .collect(),
                ),
            ]);
        }
        // Redis's order: the number of arguments, IDLE, the count, then the range
        if args.len() < 6 || args.len() > 9 {
            return syntax();
        }
        let mut rest = &args[3..];
        let mut min_idle = Duration::ZERO;
        if is(&rest[0], "idle") {
            let Some(ms) = int_arg(&rest[1]) else {
                return not_integer();
            };
            if args.len() < 8 {
                return syntax();
            }
            // a negative idle time excludes nothing
            min_idle = Duration::from_millis(ms.max(0) as u64);
            rest = &rest[2..];
        }
        if rest.len() > 4 {
            return syntax();
        }
        let Some(count) = int_arg(&rest[2]) else {
            return not_integer();
        };
        // a negative count reads as 0
        let count = count.max(0);
        let from = match StreamId::parse_start(&rest[0]) {
            Ok(from) => from,
            Err(error) => return Reply::err(error),
        };
        let to = match StreamId::parse_end(&rest[1]) {
            Ok(to) => to,
            Err(error) => return Reply::err(error),
        };
        let consumer = rest.get(3).map(text);
        let Some(group) = group() else {
            return no_group(&args[1], &args[2]);
        };
        let entries = group.pending(from, to, count as usize, consumer.as_deref(), min_idle);
        Reply::Array(
            entries
                .into_iter()
                .map(|e| {
                    Reply::Array(vec![
                        Reply::text(e.id.to_string()),
                        Reply::text(&*e.consumer),
                        Reply::Int(e.idle.as_millis() as i64),
                        Reply::Int(e.deliveries as i64),
                    ])
                })
                .collect(),
        )
    }
}

/// A publish's reply: now, or once the broker answers.
pub(crate) enum Published {
    Now(Reply),
    Later(BoxFuture<'static, Reply>),
}

/// The connection ends after this reply, if any.
pub(crate) struct Close(Option<Reply>);

fn no_group(topic: &Bytes, group: &Bytes) -> Reply {
    Reply::Error(format!(
        "NOGROUP No such key '{}' or consumer group '{}' (create it with XGROUP CREATE, or read from it with XREADGROUP)",
        text(topic),
        text(group)
    ))
}

/// A read message as stream fields: `payload`, the key if it has one, then every header.
fn fields(read: &Read) -> Reply {
    let message = read.delivery.message();
    let mut fields = Vec::with_capacity(2 + 2 * message.headers.len() + 2);
    fields.push(Reply::bulk_static("payload"));
    fields.push(Reply::Bulk(message.payload.clone()));
    if let Some(key) = &message.key {
        fields.push(Reply::bulk_static("key"));
        fields.push(Reply::Bulk(key.clone()));
    }
    for (name, value) in message.headers.iter() {
        fields.push(Reply::text(name.as_str()));
        fields.push(Reply::Bulk(value.clone().into_bytes()));
    }
    Reply::Array(fields)
}

/// The message of `XADD topic [options] * field value ...`.
fn xadd_message(args: &[Bytes]) -> Result<Message, Reply> {
    let mut at = 2;
    loop {
        let Some(arg) = args.get(at) else {
            return Err(wrong_arity("xadd"));
        };
        if is(arg, "nomkstream") {
            at += 1;
        } else if is(arg, "maxlen") || is(arg, "minid") {
            // retention is the broker's: the trim is accepted and left to it
            at += 1;
            if args
                .get(at)
                .is_some_and(|a| a.as_ref() == b"=" || a.as_ref() == b"~")
            {
                at += 1;
            }
            at += 1;
            if args.get(at).is_some_and(|a| is(a, "limit")) {
                at += 2;
            }
        } else {
            break;
        }
    }
    match args.get(at).map(Bytes::as_ref) {
        Some(b"*") => {}
        Some(_) => {
            return Err(Reply::err(
                "event-gateway assigns the ids: use * (an explicit id is not kept by the broker; the message id travels as the ce_id field)",
            ));
        }
        None => return Err(wrong_arity("xadd")),
    }
    let pairs = &args[at + 1..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(wrong_arity("xadd"));
    }
    let mut payload = None;
    let mut message = Message::new(Bytes::new());
    for pair in pairs.chunks_exact(2) {
        let (field, value) = (&pair[0], &pair[1]);
        match field.as_ref() {
            b"payload" => payload = Some(value.clone()),
            b"key" => message.key = Some(value.clone()),
            _ => {
                let name = std::str::from_utf8(field)
                    .ok()
                    .and_then(|name| HeaderName::new(name).ok())
                    .ok_or_else(|| {
                        Reply::err(format!(
                            "field '{}' cannot be a header name (headers are printable ASCII without spaces)",
                            text(field)
                        ))
                    })?;
                message.headers.append(name, value.clone());
            }
        }
    }
    message.payload = payload.ok_or_else(|| {
        Reply::err("XADD needs a 'payload' field: the message body (the other fields become headers, 'key' the message key)")
    })?;
    Ok(message)
}

/// Writes the id, time and source a message published without them needs.
fn stamp(message: &mut Message, source: &HeaderValue) {
    let headers = &mut message.headers;
    let (has_id, has_time) = (
        headers.contains(names::CE_ID),
        headers.contains(names::CE_TIME),
    );
    if !(has_id && has_time) {
        let (id, time) = event_core::publish::message_id_and_time();
        if !has_id {
            headers.append(names::CE_ID, id);
        }
        if !has_time {
            headers.append(names::CE_TIME, time);
        }
    }
    if !headers.contains(names::CE_SOURCE) {
        headers.append(names::CE_SOURCE, source.clone());
    }
}

struct XReadGroup {
    group: String,
    consumer: String,
    count: usize,
    /// `None`: return at once; `Some(0)`: wait for ever.
    block: Option<u64>,
    no_ack: bool,
    /// Topic, and the id after which to read the consumer's own messages (`None` for `>`).
    streams: Vec<(String, Option<StreamId>)>,
}

/// Reads `XREADGROUP`'s arguments as Redis does: its options in any order (a later `GROUP`
/// replacing an earlier one), then the streams.
fn parse_xreadgroup(args: &[Bytes]) -> Result<XReadGroup, Reply> {
    let mut group_and_consumer = None;
    let mut count = usize::MAX;
    let mut block = None;
    let mut no_ack = false;
    let mut at = 1;
    loop {
        let Some(arg) = args.get(at) else {
            return Err(syntax());
        };
        if is(arg, "group") {
            let (Some(group), Some(consumer)) = (args.get(at + 1), args.get(at + 2)) else {
                return Err(syntax());
            };
            group_and_consumer = Some((text(group), text(consumer)));
            at += 3;
        } else if args.get(at + 1).is_none() {
            // an option without its value, or STREAMS without streams, is one Redis does not
            // know there
            return Err(syntax());
        } else if is(arg, "count") {
            let n = args.get(at + 1).and_then(int_arg).ok_or_else(not_integer)?;
            count = if n <= 0 { usize::MAX } else { n as usize };
            at += 2;
        } else if is(arg, "block") {
            let ms = args
                .get(at + 1)
                .and_then(int_arg)
                .ok_or_else(|| Reply::err("timeout is not an integer or out of range"))?;
            if ms < 0 {
                return Err(Reply::err("timeout is negative"));
            }
            block = Some(ms as u64);
            at += 2;
        } else if is(arg, "noack") {
            no_ack = true;
            at += 1;
        } else if is(arg, "streams") {
            at += 1;
            break;
        } else {
            return Err(syntax());
        }
    }
    let rest = &args[at..];
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(Reply::err(
            // Redis 7.0's words (whose version the gateway gives)
            "Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
        ));
    }
    let Some((group, consumer)) = group_and_consumer else {
        return Err(Reply::err("Missing GROUP option for XREADGROUP"));
    };
    let (topics, ids) = rest.split_at(rest.len() / 2);
    let streams = topics
        .iter()
        .zip(ids)
        .map(|(topic, id)| {
            let after = if id.as_ref() == b">" {
                None
            } else if id.as_ref() == b"$" {
                return Err(Reply::err(
                    "The $ ID is meaningless in the context of XREADGROUP: you want to read the \
                     history of this consumer by specifying a proper ID, or use the > ID to get \
                     new messages. The $ ID would just return an empty result set.",
                ));
            } else {
                Some(StreamId::parse(id).ok_or_else(|| Reply::err(INVALID_ID))?)
            };
            Ok((text(topic), after))
        })
        .collect::<Result<_, Reply>>()?;
    Ok(XReadGroup {
        group,
        consumer,
        count,
        block,
        no_ack,
        streams,
    })
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO name ...`, `COMMAND LIST`.
fn command(args: &[Bytes]) -> Reply {
    let info = |(name, arity, flags): &(&'static str, i64, &'static [&'static str])| {
        Reply::Array(vec![
            Reply::bulk_static(name),
            Reply::Int(*arity),
            Reply::Array(flags.iter().map(|f| Reply::Simple(f)).collect()),
            Reply::Int(if name.starts_with('x') { 1 } else { 0 }),
            Reply::Int(if name.starts_with('x') { 1 } else { 0 }),
            Reply::Int(if name.starts_with('x') { 1 } else { 0 }),
        ])
    };
    match args.get(1) {
        None => Reply::Array(COMMANDS.iter().map(info).collect()),
        Some(sub) if is(sub, "count") => Reply::Int(COMMANDS.len() as i64),
        Some(sub) if is(sub, "docs") => Reply::Map(Vec::new()),
        Some(sub) if is(sub, "list") => Reply::Array(
            COMMANDS
                .iter()
                .map(|(name, _, _)| Reply::bulk_static(name))
                .collect(),
        ),
        Some(sub) if is(sub, "info") => Reply::Array(
            args[2..]
                .iter()
                .map(|name| {
                    let lower = text(name).to_ascii_lowercase();
                    COMMANDS
                        .iter()
                        .find(|(n, _, _)| *n == lower)
                        .map_or(Reply::Null, info)
                })
                .collect(),
        ),
        Some(sub) => Reply::err(format!("unknown subcommand '{}' of COMMAND", text(sub))),
    }
}

/// `CONFIG GET pattern ...`: the two settings tools such as `redis-benchmark` read (the gateway
/// keeps nothing on disk: no snapshots, no append-only file); the rest is refused.
fn config(args: &[Bytes]) -> Reply {
    const SETTINGS: &[(&str, &str)] = &[("save", ""), ("appendonly", "no")];
    if !is(&args[1], "get") {
        return Reply::err(format!(
            "unknown subcommand '{}' of CONFIG: event-gateway is configured on its command line",
            text(&args[1])
        ));
    }
    let mut pairs = Vec::new();
    for pattern in &args[2..] {
        for (name, value) in SETTINGS {
            let wanted = pattern.as_ref() == b"*" || is(pattern, name);
            if wanted && !pairs.iter().any(|(n, _): &(&str, &str)| n == name) {
                pairs.push((*name, *value));
            }
        }
    }
    Reply::Map(
        pairs
            .into_iter()
            .map(|(name, value)| (Reply::bulk_static(name), Reply::bulk_static(value)))
            .collect(),
    )
}
