//! `<features>` (ACPI, APIC, Hyper-V enlightenments, KVM visibility,
//! paravirtual spinlocks, SMM) and `<clock>` with its timers.

use super::*;
use ironvirt_crds::domain::{FeatureState, Features, PresentTimer, TickPolicy, Timer};

const FEATURES: &str = "spec.domain.features";
const CLOCK: &str = "spec.domain.clock";

/// `state='on'` or `state='off'`.
fn state(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// `<name state='…'/>` for a listed feature.
fn toggle(name: &str, f: Option<&FeatureState>) -> Option<Element> {
    f.map(|f| Element::new(name).attr("state", state(f.is_on())))
}

/// `<features>`: ACPI unless turned off, the listed features, and SMM when
/// asked for or when Secure Boot needs it.
pub(super) fn features_element(
    features: Option<&Features>,
    firmware: &Firmware,
    domain_type: DomainType,
) -> Result<Element, XmlError> {
    let none = Features::default();
    let f = features.unwrap_or(&none);
    let secure = matches!(firmware, Firmware::Efi { secure: true, .. });
    let mut out = Element::new("features");
    if f.acpi.as_ref().is_none_or(FeatureState::is_on) {
        out = out.child(Element::new("acpi"));
    }
    if let Some(apic) = f.apic.as_ref().filter(|a| a.enabled != Some(false)) {
        let mut e = Element::new("apic");
        if apic.end_of_interrupt == Some(true) {
            e = e.attr("eoi", "on");
        }
        out = out.child(e);
    }
    if let Some(h) = &f.hyperv {
        if domain_type == DomainType::Qemu {
            tcg_hyperv(h)?;
        }
        out = out.child(hyperv_element(h)?);
    }
    if let Some(kvm) = &f.kvm {
        out = out.child(
            Element::new("kvm")
                .child(Element::new("hidden").attr("state", state(kvm.hidden == Some(true)))),
        );
    }
    out = out.child_opt(toggle("pvspinlock", f.pvspinlock.as_ref()));
    match (secure, f.smm.as_ref().map(FeatureState::is_on)) {
        (true, Some(false)) => {
            return Err(invalid(
                format!("{FEATURES}.smm.enabled"),
                "EFI Secure Boot needs SMM: enable smm or set efi.secureBoot to false",
            ));
        }
        (true, _) | (false, Some(true)) => {
            out = out.child(Element::new("smm").attr("state", "on"));
        }
        (false, Some(false)) => out = out.child(Element::new("smm").attr("state", "off")),
        (false, None) => {}
    }
    Ok(out)
}

/// Under TCG, QEMU cannot set the Hyper-V VP index, which vpindex and the
/// features built on it (synic, synictimer, tlbflush, ipi) need; it refuses
/// to start. The other enlightenments work.
fn tcg_hyperv(h: &ironvirt_crds::domain::FeatureHyperv) -> Result<(), XmlError> {
    let on = |f: Option<&FeatureState>| f.is_some_and(FeatureState::is_on);
    let needs_kvm = [
        ("vpindex", on(h.vpindex.as_ref())),
        ("synic", on(h.synic.as_ref())),
        (
            "synictimer",
            h.synictimer
                .as_ref()
                .is_some_and(|t| t.enabled != Some(false)),
        ),
        (
            "tlbflush",
            h.tlbflush
                .as_ref()
                .is_some_and(|t| t.enabled != Some(false)),
        ),
        ("ipi", on(h.ipi.as_ref())),
    ];
    match needs_kvm.into_iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(unsupported(
            format!("{FEATURES}.hyperv.{name}"),
            "needs KVM: under TCG (QEMU emulation, as on this node) QEMU cannot provide \
             the Hyper-V VP index it relies on; turn it off",
        )),
        None => Ok(()),
    }
}

fn hyperv_element(h: &ironvirt_crds::domain::FeatureHyperv) -> Result<Element, XmlError> {
    let mut out = Element::new("hyperv")
        .child_opt(toggle("relaxed", h.relaxed.as_ref()))
        .child_opt(toggle("vapic", h.vapic.as_ref()));
    if let Some(s) = &h.spinlocks {
        let on = s.enabled != Some(false);
        let mut e = Element::new("spinlocks").attr("state", state(on));
        if on {
            let retries = s.spinlocks.unwrap_or(4096);
            if retries < 4096 {
                return Err(invalid(
                    format!("{FEATURES}.hyperv.spinlocks.spinlocks"),
                    format!("{retries} is less than the minimum of 4096"),
                ));
            }
            e = e.attr("retries", retries);
        }
        out = out.child(e);
    }
    out = out
        .child_opt(toggle("vpindex", h.vpindex.as_ref()))
        .child_opt(toggle("runtime", h.runtime.as_ref()))
        .child_opt(toggle("synic", h.synic.as_ref()));
    if let Some(t) = &h.synictimer {
        let on = t.enabled != Some(false);
        out = out.child(
            Element::new("stimer")
                .attr("state", state(on))
                .child_opt(toggle("direct", t.direct.as_ref()).filter(|_| on)),
        );
    }
    out = out.child_opt(toggle("reset", h.reset.as_ref()));
    if let Some(v) = &h.vendorid {
        let on = v.enabled != Some(false);
        let mut e = Element::new("vendor_id").attr("state", state(on));
        if on {
            let field = format!("{FEATURES}.hyperv.vendorid.vendorid");
            let value = v
                .vendorid
                .as_deref()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid(&field, "is required when vendorid is enabled"))?;
            if value.len() > 12 || !is_token(value, " ._-") {
                return Err(invalid(
                    field,
                    format!(
                        "{value:?} is not a vendor id (at most 12 letters, digits, ' ', '.', '_' and '-')"
                    ),
                ));
            }
            e = e.attr("value", value);
        }
        out = out.child(e);
    }
    let tlbflush = h
        .tlbflush
        .as_ref()
        .map(|t| Element::new("tlbflush").attr("state", state(t.enabled != Some(false))));
    Ok(out
        .child_opt(toggle("frequencies", h.frequencies.as_ref()))
        .child_opt(toggle("reenlightenment", h.reenlightenment.as_ref()))
        .child_opt(tlbflush)
        .child_opt(toggle("ipi", h.ipi.as_ref()))
        .child_opt(toggle("evmcs", h.evmcs.as_ref())))
}

/// `<clock>`: UTC (the default), UTC with an offset, or a time zone; then the
/// listed timers.
pub(super) fn clock_element(vmi: &VirtualMachineInstance) -> Result<Element, XmlError> {
    let Some(clock) = &vmi.spec.domain.clock else {
        return Ok(Element::new("clock").attr("offset", "utc"));
    };
    let mut out = match (&clock.utc, clock.timezone.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                CLOCK,
                "set only one of clock.utc and clock.timezone",
            ));
        }
        (None, Some(tz)) => {
            if !is_token(tz, "_+-/") {
                return Err(invalid(
                    format!("{CLOCK}.timezone"),
                    format!("{tz:?} is not a time zone name (for example Europe/Paris)"),
                ));
            }
            Element::new("clock")
                .attr("offset", "timezone")
                .attr("timezone", tz)
        }
        (Some(utc), None) => match utc.offset_seconds {
            Some(n) => Element::new("clock")
                .attr("offset", "variable")
                .attr("adjustment", n)
                .attr("basis", "utc"),
            None => Element::new("clock").attr("offset", "utc"),
        },
        (None, None) => Element::new("clock").attr("offset", "utc"),
    };
    if let Some(t) = &clock.timer {
        out = out.children(timers(t)?);
    }
    Ok(out)
}

/// `<timer>` elements, in the order hpet, kvmclock, pit, rtc, hypervclock.
fn timers(t: &Timer) -> Result<Vec<Element>, XmlError> {
    fn timer(name: &str, present: Option<bool>) -> Element {
        let present = present != Some(false);
        Element::new("timer")
            .attr("name", name)
            .attr("present", if present { "yes" } else { "no" })
    }
    fn tick(
        e: Element,
        present: Option<bool>,
        policy: Option<TickPolicy>,
        allowed: &[TickPolicy],
        field: &str,
    ) -> Result<Element, XmlError> {
        match policy {
            Some(p) if !allowed.contains(&p) => Err(invalid(
                field,
                format!(
                    "{} is not one of {}",
                    p.as_str(),
                    allowed
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            Some(p) if present != Some(false) => Ok(e.attr("tickpolicy", p.as_str())),
            _ => Ok(e),
        }
    }
    use TickPolicy::*;
    let path = format!("{CLOCK}.timer");
    let simple = |name: &str, t: &Option<PresentTimer>| t.as_ref().map(|t| timer(name, t.present));
    let mut out = Vec::new();
    if let Some(h) = &t.hpet {
        out.push(tick(
            timer("hpet", h.present),
            h.present,
            h.tick_policy,
            &[Delay, Catchup, Merge, Discard],
            &format!("{path}.hpet.tickPolicy"),
        )?);
    }
    out.extend(simple("kvmclock", &t.kvm));
    if let Some(p) = &t.pit {
        out.push(tick(
            timer("pit", p.present),
            p.present,
            p.tick_policy,
            &[Delay, Catchup, Discard],
            &format!("{path}.pit.tickPolicy"),
        )?);
    }
    if let Some(r) = &t.rtc {
        let mut e = tick(
            timer("rtc", r.present),
            r.present,
            r.tick_policy,
            &[Delay, Catchup],
            &format!("{path}.rtc.tickPolicy"),
        )?;
        if let Some(track) = r.track.filter(|_| r.present != Some(false)) {
            e = e.attr(
                "track",
                match track {
                    ironvirt_crds::domain::RtcTrack::Guest => "guest",
                    ironvirt_crds::domain::RtcTrack::Wall => "wall",
                },
            );
        }
        out.push(e);
    }
    out.extend(simple("hypervclock", &t.hyperv));
    Ok(out)
}
