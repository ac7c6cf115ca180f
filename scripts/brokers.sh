#!/usr/bin/env bash
# Provides the brokers the tests need, on their standard loopback ports:
#
#   Apache Kafka (KRaft, one node)  127.0.0.1:9092   jars from Maven Central via mvn, run with java
#   RabbitMQ                        127.0.0.1:5672   Debian's rabbitmq-server (guest/guest)
#   NATS with JetStream             127.0.0.1:4222   Debian's nats-server, started with -js
#   Redis                           127.0.0.1:6379   Debian's redis-server (and redis-cli)
#
# Usage: scripts/brokers.sh start|stop|status|env [kafka|rabbitmq|nats|redis ...]
#
#   start   installs what is missing, starts what is stopped, and waits until each broker
#           really serves (a Kafka metadata request, an AMQP handshake, NATS PING/PONG and
#           JetStream, Redis PING): idempotent, seconds when everything is cached
#   stop    stops the brokers this script started (and RabbitMQ)
#   status  says which serve, and where each logs
#   env     prints the variables the tests read (EVENT_TEST_*), for `eval "$(... env)"`
#
# Everything lives outside the clone, under $EVENT_BROKERS_HOME (default
# ~/.cache/event-brokers): the Kafka jars (kafka-<version>/libs), the Kafka log dir, the
# brokers' logs (logs/), and a Python virtualenv (venv/) with the foreign clients the probes
# and tests use (scripts/requirements-test.txt). RabbitMQ keeps its state in
# /var/lib/rabbitmq/event-brokers, where its own user can write.
set -euo pipefail

SCRIPTS="$(cd "$(dirname "$0")" && pwd)"
HOME_DIR="${EVENT_BROKERS_HOME:-$HOME/.cache/event-brokers}"
LOGS="$HOME_DIR/logs"
RUN="$HOME_DIR/run"
VENV="$HOME_DIR/venv"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$SCRIPTS/kafka/pom.xml")"
KAFKA_HOME="$HOME_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_DATA="$HOME_DIR/kafka-data"

KAFKA_ADDR="127.0.0.1:9092"
AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f"
NATS_URL="nats://127.0.0.1:4222"
REDIS_ADDR="127.0.0.1:6379"

say() { echo "== brokers: $*"; }
fail() {
    echo "error: brokers: $*" >&2
    exit 1
}

# --- shared pieces ---------------------------------------------------------------------------

APT_UPDATED=""
apt_install() { # package...
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q "install ok installed" ||
            missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return 0
    if [[ -z $APT_UPDATED ]]; then
        say "apt-get update (once)"
        apt-get update -qq
        APT_UPDATED=1
    fi
    say "installing ${missing[*]} from Debian's packages"
    # the packages' init scripts try to start the services; no systemd here, and we start
    # them ourselves on loopback
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "${missing[@]}" \
        > "$LOGS/apt.log" 2>&1 || {
        tail -n 20 "$LOGS/apt.log" >&2
        fail "apt-get install ${missing[*]} failed (log: $LOGS/apt.log)"
    }
}

ensure_venv() {
    local stamp="$VENV/.requirements"
    if [[ -x $VENV/bin/python ]] && cmp -s "$stamp" "$SCRIPTS/requirements-test.txt"; then
        return 0
    fi
    say "creating the Python virtualenv of the foreign clients ($VENV)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$SCRIPTS/requirements-test.txt" \
        > "$LOGS/pip.log" 2>&1 || {
        tail -n 20 "$LOGS/pip.log" >&2
        fail "pip install -r scripts/requirements-test.txt failed (log: $LOGS/pip.log)"
    }
    cp "$SCRIPTS/requirements-test.txt" "$stamp"
}

probe() { # kind address
    # bounded here too: a client library that retries a refused connection must not hang us
    timeout 15 "$VENV/bin/python" "$SCRIPTS/probe.py" "$1" "$2" 2> "$RUN/probe-$1.err"
}

wait_serving() { # kind address seconds log
    local deadline=$((SECONDS + $3)) answer
    until answer="$(probe "$1" "$2")"; do
        if ((SECONDS > deadline)); then
            echo "--- last lines of $4" >&2
            tail -n 30 "$4" >&2 || true
            fail "$1 did not serve at $2 within $3 s: $(cat "$RUN/probe-$1.err")"
        fi
        sleep 0.5
    done
    say "$1 serves at $2: $answer (log: $4)"
}

serves_already() { # kind address log
    if probe "$1" "$2" > /dev/null; then
        say "$1 already serves at $2 (log: $3)"
        return 0
    fi
    return 1
}

alive() { # pidfile
    [[ -f $1 ]] && kill -0 "$(cat "$1")" 2> /dev/null
}

stop_pid() { # name pidfile
    if alive "$2"; then
        local pid
        pid="$(cat "$2")"
        say "stopping $1 (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 60); do
            kill -0 "$pid" 2> /dev/null || break
            sleep 0.5
        done
        kill -9 "$pid" 2> /dev/null || true
    fi
    rm -f "$2"
}

# --- Apache Kafka ----------------------------------------------------------------------------

kafka_jars() {
    if [[ -f $KAFKA_HOME/.complete ]]; then
        return 0
    fi
    command -v mvn > /dev/null || fail "mvn is needed to fetch the Kafka jars"
    command -v java > /dev/null || fail "java (17 or newer) is needed to run Kafka"
    say "resolving Apache Kafka $KAFKA_VERSION's jars with mvn into $KAFKA_LIBS"
    rm -rf "$KAFKA_HOME"
    mkdir -p "$KAFKA_HOME"
    cp "$SCRIPTS/kafka/pom.xml" "$KAFKA_HOME/pom.xml"
    (cd "$KAFKA_HOME" && mvn -q -B dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS") > "$LOGS/mvn.log" 2>&1 || {
        tail -n 30 "$LOGS/mvn.log" >&2
        fail "mvn could not resolve the Kafka jars (log: $LOGS/mvn.log)"
    }
    touch "$KAFKA_HOME/.complete"
}

# server.properties of one KRaft node: kafka_properties PORT CONTROLLER_PORT LOG_DIR
kafka_properties() {
    cat << EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$2
listeners=PLAINTEXT://127.0.0.1:$1,CONTROLLER://127.0.0.1:$2
advertised.listeners=PLAINTEXT://127.0.0.1:$1
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$3
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# like most production clusters: topics are created on purpose, not by a typo
auto.create.topics.enable=false
# a test group forms at once instead of waiting 3 s for more members
group.initial.rebalance.delay.ms=0
EOF
}

kafka_start() {
    kafka_jars
    local log="$LOGS/kafka/server.log"
    serves_already kafka "$KAFKA_ADDR" "$log" && return 0
    # a stopped Kafka starts on an empty log dir: the tests make topics of their own names
    # and nothing reads them again, and a node loading the thousands of partitions earlier
    # runs left takes minutes to serve
    if [[ -d $KAFKA_DATA ]]; then
        # one that runs without serving (it outlived a start that timed out) goes first
        stop_pid kafka "$RUN/kafka.pid"
        say "emptying the Kafka log dir $KAFKA_DATA (what earlier runs left)"
        rm -rf "$KAFKA_DATA"
    fi
    mkdir -p "$KAFKA_DATA" "$LOGS/kafka"
    kafka_properties 9092 9093 "$KAFKA_DATA" > "$KAFKA_HOME/server.properties"
    local java=(java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=$SCRIPTS/kafka/log4j2.properties"
        "-Dkafka.logs.dir=$LOGS/kafka" -cp "$KAFKA_LIBS/*")
    if [[ ! -f $KAFKA_DATA/meta.properties ]]; then
        say "formatting the Kafka log dir $KAFKA_DATA"
        local cluster
        cluster="$("${java[@]}" kafka.tools.StorageTool random-uuid)"
        "${java[@]}" kafka.tools.StorageTool format -t "$cluster" \
            -c "$KAFKA_HOME/server.properties" > "$LOGS/kafka/format.log" 2>&1 || {
            cat "$LOGS/kafka/format.log" >&2
            fail "formatting $KAFKA_DATA failed"
        }
    fi
    say "starting Apache Kafka $KAFKA_VERSION (KRaft) on $KAFKA_ADDR"
    nohup "${java[@]}" kafka.Kafka "$KAFKA_HOME/server.properties" \
        > "$LOGS/kafka/stdout.log" 2>&1 < /dev/null &
    echo $! > "$RUN/kafka.pid"
    wait_serving kafka "$KAFKA_ADDR" 90 "$log"
}

# --- RabbitMQ --------------------------------------------------------------------------------

# the node's state (queues, exchanges, bindings) in a directory of its own, owned by the
# rabbitmq user, not the package's /var/lib/rabbitmq/mnesia
RABBITMQ_DATA=/var/lib/rabbitmq/event-brokers

rabbitmq_start() {
    apt_install rabbitmq-server
    local log=/var/log/rabbitmq
    serves_already amqp "$AMQP_URL" "$log" && return 0
    # a stopped RabbitMQ starts empty, as Kafka does: the tests declare queues of their own
    # names and never read them again, and a node recovering the thousand durable queues
    # earlier runs left needs more file handles than it has and a minute or more to serve
    rabbitmq_stop
    if [[ -d $RABBITMQ_DATA ]]; then
        say "emptying RabbitMQ's state $RABBITMQ_DATA (what earlier runs left)"
        rm -rf "$RABBITMQ_DATA"
    fi
    install -d -o rabbitmq -g rabbitmq -m 750 "$RABBITMQ_DATA"
    say "starting RabbitMQ on 127.0.0.1:5672 (state: $RABBITMQ_DATA)"
    # as the rabbitmq user, as the package's wrapper does, with the file-handle limit raised
    # to its hard limit (the soft one, 1024, is below what RabbitMQ asks for)
    su rabbitmq -s /bin/sh -c "ulimit -n \$(ulimit -Hn); cd /var/lib/rabbitmq &&
        RABBITMQ_MNESIA_BASE=$RABBITMQ_DATA RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        exec /usr/lib/rabbitmq/bin/rabbitmq-server -detached" > "$LOGS/rabbitmq.out" 2>&1 || true
    timeout 120 rabbitmqctl await_startup > /dev/null 2>&1 || true
    wait_serving amqp "$AMQP_URL" 60 "$log/rabbit@$(hostname -s).log"
}

rabbitmq_stop() {
    if command -v rabbitmqctl > /dev/null && rabbitmqctl status > /dev/null 2>&1; then
        say "stopping RabbitMQ"
        # `shutdown` waits until the node's process has ended (`stop` does not)
        rabbitmqctl shutdown > /dev/null 2>&1 || true
    fi
    # Erlang's port mapper, which the node started and leaves behind
    if command -v epmd > /dev/null && epmd -names > /dev/null 2>&1; then
        epmd -kill > /dev/null 2>&1 || true
    fi
}

# --- NATS ------------------------------------------------------------------------------------

nats_start() {
    apt_install nats-server
    local log="$LOGS/nats.log"
    serves_already nats "$NATS_URL" "$log" && return 0
    # a stopped server starts on an empty store, as Kafka and RabbitMQ do: the tests make
    # streams of their own names and never read them again
    stop_pid nats "$RUN/nats.pid"
    if [[ -d $HOME_DIR/nats-data ]]; then
        say "emptying the JetStream store $HOME_DIR/nats-data (what earlier runs left)"
        rm -rf "$HOME_DIR/nats-data"
    fi
    mkdir -p "$HOME_DIR/nats-data"
    say "starting nats-server with JetStream on 127.0.0.1:4222"
    nohup nats-server -js -a 127.0.0.1 -p 4222 -sd "$HOME_DIR/nats-data" -l "$log" \
        > "$LOGS/nats.out" 2>&1 < /dev/null &
    echo $! > "$RUN/nats.pid"
    wait_serving nats "$NATS_URL" 30 "$log"
}

# --- Redis -----------------------------------------------------------------------------------

redis_start() {
    apt_install redis-server redis-tools
    local log="$LOGS/redis.log"
    serves_already redis "$REDIS_ADDR" "$log" && return 0
    mkdir -p "$HOME_DIR/redis-data"
    say "starting redis-server on $REDIS_ADDR"
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --dir "$HOME_DIR/redis-data" \
        --logfile "$log" --pidfile "$RUN/redis.pid" --save '' --appendonly no
    wait_serving redis "$REDIS_ADDR" 30 "$log"
}

# --- commands --------------------------------------------------------------------------------

print_env() {
    cat << EOF
export EVENT_TEST_KAFKA=$KAFKA_ADDR
export EVENT_TEST_AMQP='$AMQP_URL'
export EVENT_TEST_NATS=$NATS_URL
export EVENT_TEST_REDIS=$REDIS_ADDR
export EVENT_KAFKA_LIBS=$KAFKA_LIBS
export EVENT_KAFKA_LOG4J=$SCRIPTS/kafka/log4j2.properties
export EVENT_TEST_PYTHON=$VENV/bin/python
EOF
}

status() {
    local code=0
    for broker in "${BROKERS[@]}"; do
        local kind address log
        case $broker in
            kafka) kind=kafka address=$KAFKA_ADDR log="$LOGS/kafka/server.log" ;;
            rabbitmq) kind=amqp address=$AMQP_URL log=/var/log/rabbitmq ;;
            nats) kind=nats address=$NATS_URL log="$LOGS/nats.log" ;;
            redis) kind=redis address=$REDIS_ADDR log="$LOGS/redis.log" ;;
        esac
        if answer="$(probe "$kind" "$address")"; then
            echo "$broker: serves at $address: $answer (log: $log)"
        else
            echo "$broker: not serving: $(cat "$RUN/probe-$kind.err") (log: $log)"
            code=1
        fi
    done
    return $code
}

command="${1:-}"
shift || true
BROKERS=("$@")
((${#BROKERS[@]} > 0)) || BROKERS=(kafka rabbitmq nats redis)
for broker in "${BROKERS[@]}"; do
    case $broker in
        kafka | rabbitmq | nats | redis) ;;
        *) fail "unknown broker $broker (known: kafka rabbitmq nats redis)" ;;
    esac
done
mkdir -p "$LOGS" "$RUN"

case $command in
    start)
        ensure_venv
        for broker in "${BROKERS[@]}"; do "${broker}_start"; done
        ;;
    stop)
        for broker in "${BROKERS[@]}"; do
            case $broker in
                rabbitmq) rabbitmq_stop ;;
                *) stop_pid "$broker" "$RUN/$broker.pid" ;;
            esac
        done
        ;;
    status)
        ensure_venv
        status
        ;;
    env) print_env ;;
    *)
        sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
