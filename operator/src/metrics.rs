//! Prometheus metrics: reconciles, errors by reason, reconcile duration and
//! VMIs by phase. Labels are controller names, reasons and phases, never
//! object names.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    pub controller: &'static str,
    /// The kind of object written: vm, vmi, vmirs, vmpool, controllerrevision, event.
    pub resource: &'static str,
    /// What was written: create, delete, finalizer, label, owner, spec,
    /// status (server-side apply of the controller's fields) or requests
    /// (the VM's stateChangeRequests).
    pub write: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub duration: Family<ControllerLabel, Histogram>,
    pub vmis_by_phase: Family<PhaseLabel, Gauge>,
    pub writes: Family<WriteLabel, Counter>,
    pub registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ironvirt_operator");
        let reconciles = Family::<ControllerLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let duration = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        });
        let vmis_by_phase = Family::<PhaseLabel, Gauge>::default();
        let writes = Family::<WriteLabel, Counter>::default();
        registry.register(
            "api_writes",
            "Writes (create, patch, delete) sent to the Kubernetes API",
            writes.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles take",
            duration.clone(),
        );
        registry.register("vmis", "VMIs by phase", vmis_by_phase.clone());
        Metrics {
            reconciles,
            errors,
            duration,
            vmis_by_phase,
            writes,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciles
            .get_or_create(&ControllerLabel { controller })
            .inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self
                .duration
                .get_or_create(&ControllerLabel { controller })
                .clone(),
        }
    }

    /// Counts one write to the API of an object of `resource` (vm, vmi,
    /// vmirs, …): `write` says which part (create, status, finalizer, …).
    pub fn write(&self, controller: &'static str, resource: &'static str, write: &'static str) {
        self.writes
            .get_or_create(&WriteLabel {
                controller,
                resource,
                write,
            })
            .inc();
    }

    pub fn error(&self, controller: &'static str, reason: &'static str) {
        self.errors
            .get_or_create(&ErrorLabel { controller, reason })
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
