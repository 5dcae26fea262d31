//! The broker connection's one owner: connects (never blocking start-up or scoring),
//! publishes the outbox with QoS 1, has the writer delete what the broker acknowledged,
//! answers readings that arrive on `in/{detector}`, and reconnects with exponential backoff
//! and jitter.
//!
//! Every connection starts from a fresh client, so nothing of an earlier connection is
//! retransmitted by the client library: the outbox is the only memory of what is unsent, read
//! again from its oldest message. The broker assigns packet ids in the order the session
//! publishes (`Outgoing::Publish`), and the session keeps fewer messages in flight than half
//! the ids the broker allows (its Receive Maximum), so each PUBACK names exactly one message.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, LastWill, Packet, PubAck, PubAckReason, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};
use vigil_datasets::{ObservationLog, OutboxClass, OutboxRow};

use super::{ingest, messages, LinkState, Uplink};
use crate::config::MqttConfig;
use crate::state::AppState;

/// Most messages the session keeps in flight (fewer when the broker allows fewer).
const MAX_WINDOW: usize = 16;
/// Readings the broker may send before the box acknowledges (our Receive Maximum).
const RECEIVE_MAXIMUM: u16 = 32;
/// Acknowledged ids handed to the writer at once, at the latest every tick.
const DELETE_BATCH: usize = 256;
/// How long the broker keeps this box's session (its subscription and the readings published
/// to it) while the box is away.
const SESSION_EXPIRY_SECONDS: u32 = 24 * 3600;
/// Outbox messages read at once.
const READ_BATCH: usize = 256;
/// Largest payload observation messages are merged into.
const MAX_MERGED_BYTES: usize = 256 * 1024;
/// How long new messages wait to be read with those committed after them.
const LINGER: Duration = Duration::from_millis(2);
/// A connection that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);

/// What one connection needs, made once at start-up (TLS files read, the box id known).
#[derive(Clone)]
pub struct Settings {
    pub config: MqttConfig,
    pub client_id: String,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub log_path: PathBuf,
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("config", &self.config)
            .field("client_id", &self.client_id)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Settings for `config`: reads the TLS files now, so that a bad one stops start-up.
    pub fn new(
        config: MqttConfig,
        box_id: &str,
        log_path: PathBuf,
        max_body_bytes: usize,
    ) -> anyhow::Result<Settings> {
        let tls = if config.broker.tls {
            Some(tls_config(&config)?)
        } else {
            None
        };
        Ok(Settings {
            config,
            client_id: format!("vigil-{box_id}"),
            tls,
            log_path,
            max_body_bytes,
        })
    }

    fn options(&self, uplink: &Uplink) -> MqttOptions {
        let broker = &self.config.broker;
        let mut options = MqttOptions::new(&self.client_id, &broker.host, broker.port);
        options
            .set_keep_alive(self.config.keep_alive)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_SECONDS))
            .set_manual_acks(true)
            .set_receive_maximum(Some(RECEIVE_MAXIMUM))
            .set_max_packet_size(Some(
                u32::try_from(self.max_body_bytes + 64 * 1024).unwrap_or(u32::MAX),
            ))
            .set_connection_timeout(10)
            .set_last_will(LastWill::new(
                uplink.topics().status(),
                uplink.topics().offline("connection_lost"),
                QoS::AtLeastOnce,
                true,
                None,
            ));
        if let Some(user) = &self.config.username {
            options.set_credentials(user, self.config.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        options
    }
}

/// TLS for `mqtts://`: the CA file's certificates (else the system's roots), and the client
/// certificate and key when given; ring as the provider.
fn tls_config(config: &MqttConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read the CA file {}", path.display()))?
            {
                let cert =
                    cert.with_context(|| format!("bad certificate in {}", path.display()))?;
                roots.add(cert)?;
            }
            anyhow::ensure!(!roots.is_empty(), "no certificate in {}", path.display());
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let tls = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("bad certificate in {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read the key {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

/// The wait before reconnect attempt `attempt` (0 after a stable connection): 0.5 s doubling
/// to at most 30 s, of which a random half (`jitter` in [0, 1)) so that a site's boxes do not
/// all come back at once after the broker restarts.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let full = (0.5 * 2f64.powi(attempt.min(16) as i32)).min(30.0);
    Duration::from_secs_f64(full * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
}

/// How many messages to keep in flight when the broker allows `receive_max`: fewer than half
/// its packet ids, so that an id is never reused while a message that had it is unacknowledged.
pub fn window(receive_max: Option<u16>) -> usize {
    let allowed = receive_max.map_or(u16::MAX as usize, usize::from);
    (allowed / 2).clamp(1, MAX_WINDOW)
}

/// A readable reason for a refused connection.
fn refusal(code: ConnectReturnCode) -> String {
    match code {
        ConnectReturnCode::BadUserNamePassword => "bad user name or password".into(),
        ConnectReturnCode::NotAuthorized => "not authorized".into(),
        ConnectReturnCode::Banned => "banned".into(),
        ConnectReturnCode::ClientIdentifierNotValid | ConnectReturnCode::BadClientId => {
            "client identifier not valid".into()
        }
        other => format!("{other:?}"),
    }
}

/// Runs the uplink until `stop` turns true; then says `offline` on the status topic itself (a
/// clean disconnect discards the Last Will) and waits briefly for acknowledgements.
pub async fn run(
    state: AppState,
    uplink: Arc<Uplink>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    let reader = match ObservationLog::open_reader(&settings.log_path) {
        Ok(log) => Arc::new(Mutex::new(log)),
        Err(err) => {
            tracing::error!(
                error = format!("{err:#}"),
                "the uplink cannot read the outbox"
            );
            uplink.set(
                LinkState::Disconnected,
                Some(format!("cannot read the outbox: {err}")),
            );
            return;
        }
    };
    // One worker scores readings in the order they arrived; its answers come back here.
    let (readings, worker_queue) = mpsc::channel::<Inbound>(RECEIVE_MAXIMUM as usize * 2);
    let (answers, mut answered) = mpsc::channel::<Answered>(RECEIVE_MAXIMUM as usize * 2);
    let worker = tokio::spawn(score_readings(
        state.clone(),
        uplink.topics().clone(),
        worker_queue,
        answers,
    ));
    let mut attempt = 0u32;
    let mut generation = 0u64;
    loop {
        generation += 1;
        // Room for a window of publishes, an acknowledgement per reading the broker may send
        // unacknowledged, and the subscription: a request never finds the channel full.
        let requests = MAX_WINDOW + 2 * RECEIVE_MAXIMUM as usize + 8;
        let (client, events) = AsyncClient::new(settings.options(&uplink), requests);
        let mut link = Link {
            client,
            uplink: &uplink,
            state: &state,
            reader: &reader,
            generation,
            window: window(None),
            connected_at: None,
            queued: VecDeque::new(),
            in_flight: HashMap::new(),
            cursors: [0, 0],
            more: true,
            pending: VecDeque::new(),
            acked: Vec::new(),
            replies: VecDeque::new(),
            subscribe: settings.config.subscribe,
        };
        let ended = link
            .drive(events, &mut stop, &readings, &mut answered)
            .await;
        let lasted = link.connected_at.map(|t| t.elapsed());
        link.flush_acks();
        match ended {
            Ended::Stopped => break,
            Ended::Lost(state, reason) => {
                metrics::counter!("vigil_uplink_connection_failures_total").increment(1);
                uplink.set(state, Some(reason));
            }
        }
        attempt = if lasted.is_some_and(|d| d >= STABLE) {
            0
        } else {
            attempt.saturating_add(1)
        };
        let wait = backoff(attempt, rand::random::<f64>());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
    }
    uplink.set(LinkState::Disconnected, Some("shut down".into()));
    drop(readings);
    let _ = worker.await;
}

/// A reading from the broker, tagged with the connection it arrived on.
#[derive(Debug)]
struct Inbound {
    generation: u64,
    publish: Publish,
}

/// A reading scored, to be acknowledged and answered.
#[derive(Debug)]
struct Answered {
    generation: u64,
    publish: Publish,
    reply: ingest::Reply,
}

async fn score_readings(
    state: AppState,
    topics: messages::Topics,
    mut queue: mpsc::Receiver<Inbound>,
    answers: mpsc::Sender<Answered>,
) {
    while let Some(Inbound {
        generation,
        publish,
    }) = queue.recv().await
    {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let (response_topic, correlation) = publish
            .properties
            .as_ref()
            .map(|p| (p.response_topic.clone(), p.correlation_data.clone()))
            .unwrap_or_default();
        let reply = ingest::handle(
            &state,
            &topics,
            &topic,
            &publish.payload,
            response_topic,
            correlation,
        )
        .await;
        if answers
            .send(Answered {
                generation,
                publish,
                reply,
            })
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Why a connection ended.
enum Ended {
    Stopped,
    Lost(LinkState, String),
}

/// What a packet id in flight carries.
#[derive(Debug, Clone)]
enum Sent {
    /// Outbox messages (several observation messages merged into one): deleted once
    /// acknowledged.
    Outbox(Vec<i64>),
    /// The birth message or an answer to a reading: nothing to delete.
    Other,
}

/// One connection's state.
struct Link<'a> {
    client: AsyncClient,
    uplink: &'a Uplink,
    state: &'a AppState,
    reader: &'a Arc<Mutex<ObservationLog>>,
    generation: u64,
    window: usize,
    connected_at: Option<Instant>,
    /// Published, waiting for their packet id (`Outgoing::Publish`), in order.
    queued: VecDeque<Sent>,
    /// By packet id, waiting for PUBACK.
    in_flight: HashMap<u16, Sent>,
    /// The last outbox id published on this connection, per class.
    cursors: [i64; 2],
    /// The outbox may hold messages past the cursors.
    more: bool,
    /// Read from the outbox, not yet published.
    pending: VecDeque<OutboxRow>,
    /// Acknowledged outbox ids not yet handed to the writer.
    acked: Vec<i64>,
    /// Answers to readings waiting for room in the window.
    replies: VecDeque<ingest::Reply>,
    subscribe: bool,
}

impl Link<'_> {
    async fn drive(
        &mut self,
        events: EventLoop,
        stop: &mut watch::Receiver<bool>,
        readings: &mpsc::Sender<Inbound>,
        answered: &mut mpsc::Receiver<Answered>,
    ) -> Ended {
        // The client library's poll must not be cancelled (a connection half made is
        // dropped and made again): it runs in a task of its own, which ends with the link.
        let (pumped, mut received) = mpsc::channel(64);
        let pump = AbortOnDrop(tokio::spawn(pump(events, pumped)));
        let ended = self.select(&mut received, stop, readings, answered).await;
        drop(pump);
        ended
    }

    async fn select(
        &mut self,
        events: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
        stop: &mut watch::Receiver<bool>,
        readings: &mpsc::Sender<Inbound>,
        answered: &mut mpsc::Receiver<Answered>,
    ) -> Ended {
        let outbox = self.uplink.outbox.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // New messages are read a moment after the first of them is committed, so that one
        // read (and one hop to a blocking thread) takes several.
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        let mut lingering = false;
        loop {
            if let Err(reason) = self.send().await {
                return Ended::Lost(LinkState::Disconnected, reason);
            }
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    self.goodbye(events).await;
                    return Ended::Stopped;
                }
                event = events.recv() => {
                    let Some(event) = event else {
                        return Ended::Lost(LinkState::Disconnected, "the connection ended".into());
                    };
                    if let Err(ended) = self.on_event(event, readings) {
                        return ended;
                    }
                }
                Some(done) = answered.recv() => self.on_answer(done),
                () = outbox.ready.notified(), if !lingering => {
                    lingering = true;
                    linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                }
                () = &mut linger, if lingering => {
                    lingering = false;
                    self.more = true;
                }
                // (A commit's notification is never lost: `notify_one` keeps it for the next
                // wait, so nothing here reads the outbox again on a timer.)
                _ = tick.tick() => self.flush_acks(),
            }
        }
    }

    fn on_event(
        &mut self,
        event: Result<Event, ConnectionError>,
        readings: &mpsc::Sender<Inbound>,
    ) -> Result<(), Ended> {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                self.window = window(ack.properties.as_ref().and_then(|p| p.receive_max));
                self.connected_at = Some(Instant::now());
                self.uplink.set(LinkState::Connected, None);
                let topics = self.uplink.topics();
                let detectors: Vec<String> = self
                    .state
                    .detector_list()
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                let birth = topics.birth(&detectors, self.subscribe, crate::unix_now());
                self.publish(topics.status(), birth, true, None, Sent::Other)
                    .map_err(|reason| Ended::Lost(LinkState::Disconnected, reason))?;
                if self.subscribe {
                    self.client
                        .try_subscribe(topics.inbound_filter(), QoS::AtLeastOnce)
                        .map_err(|e| Ended::Lost(LinkState::Disconnected, e.to_string()))?;
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => self.on_published(pkid),
            Ok(Event::Outgoing(Outgoing::AwaitAck(pkid))) => {
                // A packet id in use again before its PUBACK (the broker acknowledges out of
                // order): start again on a fresh connection rather than guess.
                return Err(Ended::Lost(
                    LinkState::Disconnected,
                    format!("packet id {pkid} reused before its acknowledgement"),
                ));
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => self.on_puback(&ack),
            Ok(Event::Incoming(Packet::Publish(publish))) => self.on_reading(publish, readings),
            Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                return Err(Ended::Lost(
                    LinkState::Disconnected,
                    format!("the broker disconnected: {:?}", disconnect.reason_code),
                ));
            }
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => {
                return Err(Ended::Lost(LinkState::Refused, refusal(code)));
            }
            Err(err) => return Err(Ended::Lost(LinkState::Disconnected, err.to_string())),
        }
        Ok(())
    }

    /// The client gave the next published message its packet id.
    fn on_published(&mut self, pkid: u16) {
        if let Some(sent) = self.queued.pop_front() {
            self.in_flight.insert(pkid, sent);
        }
    }

    /// The broker acknowledged a message: outbox messages it accepted are handed to the writer
    /// for deletion; those it refused (not authorised for the topic, quota) are kept, and
    /// tried again after the next reconnect.
    fn on_puback(&mut self, ack: &PubAck) {
        let sent = self.in_flight.remove(&ack.pkid);
        let accepted = matches!(
            ack.reason,
            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
        );
        match (sent, accepted) {
            (Some(Sent::Outbox(ids)), true) => {
                metrics::counter!("vigil_uplink_sent_total").increment(ids.len() as u64);
                self.acked.extend(ids);
                if self.acked.len() >= DELETE_BATCH {
                    self.flush_acks();
                }
            }
            (Some(Sent::Outbox(ids)), false) => {
                metrics::counter!("vigil_uplink_failed_total").increment(ids.len() as u64);
                tracing::warn!(messages = ?ids, reason = ?ack.reason, "the broker refused an uplink message");
            }
            _ => {}
        }
    }

    /// A reading for the worker. With QoS 1 the broker sends at most our Receive Maximum
    /// unacknowledged, which the queue holds; a QoS 0 reading that finds it full is dropped.
    fn on_reading(&mut self, publish: Publish, readings: &mpsc::Sender<Inbound>) {
        let qos = publish.qos;
        let inbound = Inbound {
            generation: self.generation,
            publish,
        };
        if let Err(mpsc::error::TrySendError::Full(inbound)) = readings.try_send(inbound) {
            metrics::counter!("vigil_uplink_ingested_total", "outcome" => "dropped").increment(1);
            if qos != QoS::AtMostOnce {
                // Cannot happen within the Receive Maximum; acknowledged so that the order of
                // acknowledgements holds, and counted.
                let _ = self.client.try_ack(&inbound.publish);
            }
        }
    }

    /// A reading was scored: acknowledge it (on the connection it came on) and answer.
    fn on_answer(&mut self, done: Answered) {
        if done.generation != self.generation {
            // Its connection is gone; the broker sends it again on this one.
            return;
        }
        if done.publish.qos != QoS::AtMostOnce {
            if let Err(err) = self.client.try_ack(&done.publish) {
                // Unacknowledged, the broker sends it again after a reconnect.
                tracing::warn!(error = %err, "cannot acknowledge an MQTT reading");
            }
        }
        if self.replies.len() < RECEIVE_MAXIMUM as usize * 2 {
            self.replies.push_back(done.reply);
        }
    }

    /// Publishes answers, then outbox messages, while the window has room.
    async fn send(&mut self) -> Result<(), String> {
        if self.connected_at.is_none() {
            return Ok(());
        }
        while self.busy() < self.window {
            let Some(reply) = self.replies.pop_front() else {
                break;
            };
            let properties = reply.correlation.map(|data| PublishProperties {
                correlation_data: Some(data),
                ..PublishProperties::default()
            });
            self.publish(reply.topic, reply.payload, false, properties, Sent::Other)?;
        }
        while self.busy() < self.window {
            if self.pending.is_empty() {
                if !self.more {
                    break;
                }
                let rows = self.next_rows(READ_BATCH).await?;
                if rows.len() < READ_BATCH {
                    self.more = false;
                }
                for row in &rows {
                    self.cursors[row.message.class.index()] = row.id;
                }
                self.pending.extend(rows);
                if self.pending.is_empty() {
                    break;
                }
            }
            let (topic, payload, ids) = next_message(&mut self.pending);
            let topic = self.uplink.topics().full(&topic);
            self.publish(topic, payload, false, None, Sent::Outbox(ids))?;
        }
        Ok(())
    }

    fn busy(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }

    /// The next `n` outbox messages after the cursors: reports first.
    async fn next_rows(&self, n: usize) -> Result<Vec<OutboxRow>, String> {
        let reader = self.reader.clone();
        let cursors = self.cursors;
        tokio::task::spawn_blocking(move || {
            let log = reader.lock().unwrap_or_else(|e| e.into_inner());
            let mut rows =
                log.outbox_after(OutboxClass::Report, cursors[OutboxClass::Report.index()], n)?;
            if rows.len() < n {
                rows.extend(log.outbox_after(
                    OutboxClass::Observations,
                    cursors[OutboxClass::Observations.index()],
                    n - rows.len(),
                )?);
            }
            Ok::<_, vigil_datasets::LogError>(rows)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot read the outbox: {e}"))
    }

    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        properties: Option<PublishProperties>,
        sent: Sent,
    ) -> Result<(), String> {
        let published = match properties {
            Some(properties) => self.client.try_publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                retain,
                payload,
                properties,
            ),
            None => self
                .client
                .try_publish(topic, QoS::AtLeastOnce, retain, payload),
        };
        published.map_err(|e| format!("cannot queue a message: {e}"))?;
        self.queued.push_back(sent);
        Ok(())
    }

    fn flush_acks(&mut self) {
        if !self.acked.is_empty() {
            self.state
                .inner
                .writer
                .outbox_sent(std::mem::take(&mut self.acked));
        }
    }

    /// Says `offline` (retained) and disconnects, waiting at most two seconds for the broker.
    async fn goodbye(&mut self, events: &mut mpsc::Receiver<Result<Event, ConnectionError>>) {
        if self.connected_at.is_none() {
            return;
        }
        let offline = self.uplink.topics().offline("shutdown");
        let status = self.uplink.topics().status();
        if self
            .publish(status, offline, true, None, Sent::Other)
            .is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        let mut disconnecting = false;
        loop {
            tokio::select! {
                () = &mut deadline => break,
                event = events.recv() => match event {
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => self.on_published(pkid),
                    Some(Ok(Event::Incoming(Packet::PubAck(ack)))) => self.on_puback(&ack),
                    Some(Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
            if self.busy() == 0 && !disconnecting {
                disconnecting = true;
                let _ = self.client.try_disconnect();
            }
        }
        self.flush_acks();
    }
}

/// The next message to publish from `pending` (not empty): a report as it is stored, with its
/// id; or the observation messages of one topic that follow each other, merged into one (up to
/// [`MAX_MERGED_BYTES`]), with all their ids.
fn next_message(pending: &mut VecDeque<OutboxRow>) -> (String, Vec<u8>, Vec<i64>) {
    let OutboxRow { id, message } = pending.pop_front().expect("a pending message");
    if message.class != OutboxClass::Observations {
        return (
            message.topic,
            messages::with_ids(&message.payload, &[id]),
            vec![id],
        );
    }
    let mut size = message.payload.len();
    let mut group = vec![(id, message.payload)];
    while let Some(next) = pending.front() {
        let same =
            next.message.class == OutboxClass::Observations && next.message.topic == message.topic;
        if !same || size + next.message.payload.len() > MAX_MERGED_BYTES {
            break;
        }
        let next = pending.pop_front().expect("a pending message");
        size += next.message.payload.len();
        group.push((next.id, next.message.payload));
    }
    let ids: Vec<i64> = group.iter().map(|(id, _)| *id).collect();
    let parts: Vec<&[u8]> = group.iter().map(|(_, p)| p.as_slice()).collect();
    if let Some(merged) = messages::merge_observations(&parts) {
        return (message.topic, messages::with_ids(&merged, &ids), ids);
    }
    // Not in the shape this version writes: one at a time after all.
    for (id, payload) in group.drain(1..).rev() {
        pending.push_front(OutboxRow {
            id,
            message: vigil_datasets::OutboxMessage {
                class: message.class,
                topic: message.topic.clone(),
                payload,
                created: message.created,
            },
        });
    }
    let (id, payload) = group.pop().expect("the first message");
    (message.topic, messages::with_ids(&payload, &[id]), vec![id])
}

/// Polls the client's event loop and hands every event over, until the connection fails or
/// the link is gone.
async fn pump(mut events: EventLoop, to: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let event = events.poll().await;
        let failed = event.is_err();
        if to.send(event).await.is_err() || failed {
            break;
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_half_a_minute_with_half_of_it_random() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(30, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(30, 0.0), Duration::from_secs(15));
        assert!(backoff(2, 0.5) > backoff(2, 0.0));
    }

    #[test]
    fn the_window_stays_under_half_the_brokers_packet_ids() {
        assert_eq!(window(None), MAX_WINDOW);
        assert_eq!(window(Some(20)), 10);
        assert_eq!(window(Some(3)), 1);
        assert_eq!(window(Some(1)), 1);
        assert_eq!(window(Some(1000)), MAX_WINDOW);
    }
}
