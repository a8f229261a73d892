//! The registry: every stream of this relay by name.

use super::stream::{Source, Stream, Viewer, ViewerStart};
use super::{FanoutConfig, Publisher, StreamName};
use crate::Error;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// What [`StreamSource::open`] returns.
pub type OpenFuture<'a> = Pin<Box<dyn Future<Output = Option<Stream>> + Send + 'a>>;

/// Where streams this relay does not have come from (the cascade's edge
/// side implements it): asked when a viewer wants a stream that is missing.
pub trait StreamSource: Send + Sync + 'static {
    /// Start pulling `name` from upstream. Resolves to the stream when an
    /// upstream has it (it may not be live yet), or `None` when none has it.
    /// Concurrent calls for one name should share one upstream subscription.
    fn open<'a>(&'a self, registry: &'a Registry, name: &'a str) -> OpenFuture<'a>;
}

/// How often a viewer waiting with `wait=` asks the upstream source again.
const SOURCE_RETRY: Duration = Duration::from_secs(1);

pub(crate) struct RegistryInner {
    streams: DashMap<String, Stream>,
    config: FanoutConfig,
    /// Bumped whenever a stream is created, for viewers waiting with `wait=`.
    created: watch::Sender<u64>,
    source: OnceLock<Arc<dyn StreamSource>>,
    /// Relay-wide counters for `/metrics` (every stream's stats).
    pub(super) totals: super::stats::Totals,
    /// Every publisher and viewer holds a token of this tracker while it
    /// lives: shutdown awaits it instead of polling the streams.
    pub(super) sessions: TaskTracker,
}

impl RegistryInner {
    pub(super) fn remove_stream(&self, stream: &Stream) {
        self.streams
            .remove_if(stream.name(), |_, s| Arc::ptr_eq(&s.0, &stream.0));
    }
}

/// Every stream of this relay by name (cheap to clone).
#[derive(Clone)]
pub struct Registry(Arc<RegistryInner>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("streams", &self.0.streams.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(config: FanoutConfig) -> Registry {
        Registry(Arc::new(RegistryInner {
            streams: DashMap::new(),
            config,
            created: watch::channel(0).0,
            source: OnceLock::new(),
            totals: super::stats::Totals::default(),
            sessions: TaskTracker::new(),
        }))
    }

    /// Resolves when no publisher and no viewer of this registry is left
    /// (shutdown waits for it, after telling every session to end).
    pub async fn sessions_ended(&self) {
        self.0.sessions.close();
        self.0.sessions.wait().await;
    }

    /// The fan-out configuration.
    pub fn config(&self) -> &FanoutConfig {
        &self.0.config
    }

    /// Bytes every stream holds together ([`Stream::held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.0.streams.iter().map(|s| s.value().held_bytes()).sum()
    }

    /// Relay-wide counters (for `/metrics`).
    pub fn totals(&self) -> &super::stats::Totals {
        &self.0.totals
    }

    /// Install the upstream source (an edge's origins). Only the first call counts.
    pub fn set_source(&self, source: Arc<dyn StreamSource>) {
        let _ = self.0.source.set(source);
    }

    /// Attach a publisher to `name`, creating the stream or rejoining one in
    /// its grace period.
    pub fn publish(&self, name: &str) -> Result<Publisher, Error> {
        self.publish_from(name, Source::Local)
    }

    /// Like [`publish`](Self::publish), recording where the stream comes from.
    pub fn publish_from(&self, name: &str, source: Source) -> Result<Publisher, Error> {
        StreamName::parse(name)?;
        let (stream, created) = match self.0.streams.entry(name.to_string()) {
            Entry::Occupied(mut e) => {
                if e.get().is_closed() {
                    let s = self.new_stream(name, source);
                    e.insert(s.clone());
                    (s, true)
                } else {
                    (e.get().clone(), false)
                }
            }
            Entry::Vacant(e) => {
                let s = self.new_stream(name, source);
                e.insert(s.clone());
                (s, true)
            }
        };
        let publisher = stream.attach_publisher();
        if created {
            self.0.created.send_modify(|v| *v = v.wrapping_add(1));
        }
        if publisher.is_err() && created {
            stream.close(super::EndReason::PublisherGone);
        }
        publisher
    }

    fn new_stream(&self, name: &str, source: Source) -> Stream {
        Stream::new(
            name.to_string(),
            self.0.config.clone(),
            source,
            Arc::downgrade(&self.0),
        )
    }

    /// The stream called `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Stream> {
        self.0
            .streams
            .get(name)
            .map(|s| s.clone())
            .filter(|s| !s.is_closed())
    }

    /// Every stream, sorted by name.
    pub fn list(&self) -> Vec<Stream> {
        let mut v: Vec<Stream> = self.0.streams.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    /// Number of streams.
    pub fn len(&self) -> usize {
        self.0.streams.len()
    }

    /// True when there is no stream.
    pub fn is_empty(&self) -> bool {
        self.0.streams.is_empty()
    }

    /// Find `name` locally or upstream, waiting up to `wait` for it to appear.
    pub async fn find(&self, name: &str, wait: Duration) -> Result<Stream, Error> {
        StreamName::parse(name)?;
        let mut rx = self.0.created.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            rx.borrow_and_update();
            if let Some(s) = self.get(name) {
                return Ok(s);
            }
            let source = self.0.source.get();
            if let Some(source) = source
                && let Some(s) = source.open(self, name).await
            {
                return Ok(s);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::NotFound(name.to_string()));
            }
            // With an upstream, ask it again now and then: the stream may start there.
            let until = match source {
                Some(_) => deadline.min(now + SOURCE_RETRY),
                None => deadline,
            };
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(Error::NotFound(name.to_string())),
                Err(_) if until < deadline => continue,
                Err(_) => return Err(Error::NotFound(name.to_string())),
            }
        }
    }

    /// Open a viewer on `name` (see [`find`](Self::find)).
    pub async fn subscribe(
        &self,
        name: &str,
        start: ViewerStart,
        wait: Duration,
    ) -> Result<Viewer, Error> {
        Ok(self.find(name, wait).await?.subscribe(start))
    }

    /// Close every stream (shutdown).
    pub fn close_all(&self, reason: super::EndReason) {
        for s in self.list() {
            s.close(reason);
        }
    }
}
