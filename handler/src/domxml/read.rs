//! The reverse direction: the facts the handler reads back from a domain's
//! XML (its ironvirt metadata, the VNC port and the MACs).

use super::*;

/// Reads ironvirt's metadata element (as returned by libvirt's
/// `virDomainGetMetadata(ELEMENT)`, or a whole domain XML) back into its owner.
///
/// The element is found by its namespace, whatever its prefix. `None` when
/// the XML does not parse, has no such element, or an attribute is missing.
pub fn parse_owner(xml: &str) -> Option<DomainOwner> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let vmi = doc.descendants().find(|n| {
        n.is_element()
            && n.tag_name().namespace() == Some(METADATA_NS)
            && n.tag_name().name() == "vmi"
    })?;
    owner_from(vmi)
}

/// Reads the owner from the element `virDomainGetMetadata(ELEMENT, METADATA_NS)`
/// returns. libvirt strips the namespace from it (`<vmi namespace=… …/>`):
/// the call itself already selected ironvirt's namespace.
pub fn parse_owner_element(xml: &str) -> Option<DomainOwner> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    if root.tag_name().name() != "vmi" {
        return None;
    }
    owner_from(root)
}

fn owner_from(vmi: roxmltree::Node<'_, '_>) -> Option<DomainOwner> {
    let attr = |name: &str| vmi.attribute(name).map(str::to_owned);
    Some(DomainOwner {
        namespace: attr("namespace")?,
        name: attr("name")?,
        uid: attr("uid")?,
        node: attr("node")?,
    })
}

/// Facts read from a live domain's XML (`virDomainGetXMLDesc`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveFacts {
    /// The VNC server's UNIX socket, once the domain runs.
    pub vnc_socket: Option<PathBuf>,
    /// The UNIX socket QEMU serves the serial console on (port 0), when the
    /// serial port is one; None for a pty console.
    pub serial_socket: Option<PathBuf>,
    /// The MAC of each interface, by its alias `ua-<interface name>`, in XML order.
    pub macs: Vec<(String, String)>,
}

/// Parses [`LiveFacts`] from a domain XML.
///
/// Never fails: what cannot be read is left out (an XML that does not parse
/// gives the defaults). MACs come from the `<interface>` elements that have
/// both a MAC and an alias, then from the `-device …,netdev=ua-<name>,mac=…`
/// arguments of `<qemu:commandline>`.
pub fn parse_live(xml: &str) -> LiveFacts {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return LiveFacts::default();
    };
    let root = doc.root_element();
    let devices = root.children().find(|n| n.has_tag_name("devices"));
    let device_children = || devices.into_iter().flat_map(|d| d.children());

    let vnc_socket = device_children()
        .find(|n| n.has_tag_name("graphics") && n.attribute("type") == Some("vnc"))
        .and_then(|g| g.attribute("socket"))
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from);

    let serial_socket = device_children()
        .find(|n| n.has_tag_name("serial") && n.attribute("type") == Some("unix"))
        .and_then(|s| s.children().find(|c| c.has_tag_name("source")))
        .filter(|src| src.attribute("mode") == Some("bind"))
        .and_then(|src| src.attribute("path"))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from);

    let mut macs: Vec<(String, String)> = device_children()
        .filter(|n| n.has_tag_name("interface"))
        .filter_map(|iface| {
            let child_attr = |tag: &str, attr: &str| {
                iface
                    .children()
                    .find(|c| c.has_tag_name(tag))
                    .and_then(|c| c.attribute(attr))
            };
            let alias = child_attr("alias", "name")?;
            let mac = child_attr("mac", "address")?;
            Some((alias.to_owned(), mac.to_ascii_lowercase()))
        })
        .collect();

    let args: Vec<&str> = root
        .children()
        .filter(|n| n.has_tag_name((QEMU_NS, "commandline")))
        .flat_map(|c| c.children())
        .filter(|n| n.has_tag_name((QEMU_NS, "arg")))
        .filter_map(|a| a.attribute("value"))
        .collect();
    for pair in args.windows(2) {
        if pair[0] != "-device" {
            continue;
        }
        let options: BTreeMap<&str, &str> = pair[1]
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        if let (Some(netdev), Some(mac)) = (options.get("netdev"), options.get("mac")) {
            macs.push(((*netdev).to_owned(), mac.to_ascii_lowercase()));
        }
    }
    LiveFacts {
        vnc_socket,
        serial_socket,
        macs,
    }
}
