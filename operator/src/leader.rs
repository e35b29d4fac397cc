//! Leader election on a coordination.k8s.io Lease, as client-go does it: the
//! holder renews the Lease; another candidate takes it over once the record has
//! not changed for a whole lease duration (measured on its own clock, so clock
//! skew between machines does not matter). Updates use the resourceVersion, so
//! two candidates can never both win.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a silent holder keeps the lease.
    pub lease_duration: Duration,
    /// How often the holder renews (well under the duration).
    pub renew_interval: Duration,
}

/// A candidate's view of the Lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: Election,
    observed: Option<(String, Instant)>,
}

/// What one attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Leading,
    Following { holder: String },
}

fn record_key(l: &Lease) -> String {
    let spec = l.spec.clone().unwrap_or_default();
    format!(
        "{}|{:?}|{}",
        spec.holder_identity.unwrap_or_default(),
        spec.renew_time.map(|t| t.0),
        l.metadata.resource_version.clone().unwrap_or_default()
    )
}

impl Elector {
    pub fn new(client: kube::Client, cfg: Election) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let same_holder =
            previous.and_then(|p| p.holder_identity.as_deref()) == Some(self.cfg.identity.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if same_holder {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if same_holder {
                transitions
            } else {
                transitions + 1
            }),
            ..Default::default()
        }
    }

    /// Acquires or renews the lease once.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Outcome, kube::Error> {
        let Some(current) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Leading),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Following {
                    holder: "unknown".into(),
                }),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let key = record_key(&current);
        let now = Instant::now();
        let unchanged_since = match &self.observed {
            Some((k, t)) if *k == key => *t,
            _ => {
                self.observed = Some((key, now));
                now
            }
        };
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.cfg.lease_duration, Duration::from_secs);
        let expired = holder.is_empty() || now.duration_since(unchanged_since) >= duration;
        if holder != self.cfg.identity && !expired {
            return Ok(Outcome::Following { holder });
        }
        let mut next = current.clone();
        next.spec = Some(self.spec(Some(&spec)));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(l) => {
                self.observed = Some((record_key(&l), Instant::now()));
                Ok(Outcome::Leading)
            }
            // Someone else's update won: they lead. A conflict on our own renewal
            // is only an error: `hold` retries until the lease duration runs out,
            // and the next read shows who holds the lease.
            Err(kube::Error::Api(s)) if s.code == 409 && holder != self.cfg.identity => {
                Ok(Outcome::Following { holder })
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate leads.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Outcome::Leading) => {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.name, "became leader");
                    return;
                }
                Ok(Outcome::Following { holder }) => {
                    tracing::debug!(%holder, "standing by");
                }
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.cfg.renew_interval).await;
        }
    }

    /// Renews until the lease is lost (another holder, or no successful renewal
    /// for a whole lease duration). Returns when leadership ends.
    pub async fn hold(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.cfg.renew_interval).await;
            match self.try_acquire_or_renew().await {
                Ok(Outcome::Leading) => last_ok = Instant::now(),
                Ok(Outcome::Following { holder }) => {
                    tracing::error!(%holder, "lost the leader lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the leader lease");
                    if last_ok.elapsed() >= self.cfg.lease_duration {
                        tracing::error!("no renewal for a whole lease duration; stepping down");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up at shutdown, so a standby takes over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut current)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let mine = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.cfg.identity.as_str());
        if !mine {
            return;
        }
        if let Some(spec) = current.spec.as_mut() {
            spec.holder_identity = None;
        }
        if let Err(e) = self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &current)
            .await
        {
            tracing::warn!(error = %e, "could not release the leader lease");
        }
    }
}
