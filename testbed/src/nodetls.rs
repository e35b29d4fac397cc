//! Encrypted, authenticated migration between the bed's nodes (issue #18):
//! libvirt's own TLS.
//!
//! Each node gets a certificate of the bed's libvirt CA
//! ([`crate::pki::names::LIBVIRT_CA`], which issues nothing but node
//! certificates) naming the node (CN, DNS name) and its address (IP SAN),
//! for server and client use. With it:
//! - the node's libvirtd listens with TLS on its address only
//!   (`listen_tls`, port 16514; no plain TCP port), requires a client
//!   certificate of that CA and accepts only node certificates
//!   (`tls_allowed_dn_list`);
//! - QEMU's migration stream (and the NBD stream of a block migration)
//!   runs over TLS with the same certificate, verified on both ends
//!   (`migrate_tls_x509_verify`), and libvirt refuses a migration without
//!   TLS (`migrate_tls_force`);
//! - QEMU's incoming migration listens on the node's address
//!   (`migration_address`), the one the source dials (`migration_host`).
//!
//! A peer-to-peer migration's source libvirtd opens
//! [`tls_uri`]`(target)`: `qemu+tls://<address>/system?pkipath=…`, whose
//! `pkipath` points it at the node's client certificate (the default,
//! /etc/pki, is the host's and is not in a node's namespaces). libvirt
//! verifies the target's certificate against the URI's host, QEMU against
//! the migration URI's host (the address in both).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::pki::{LeafSpec, Pki, PkiError, Usage};

/// The node's libvirt PKI directory, inside the node (its /etc/libvirt is
/// its own): `cacert.pem`, `servercert.pem`, `serverkey.pem`,
/// `clientcert.pem`, `clientkey.pem`, libvirt's names.
pub const NODE_PKI_DIR: &str = "/etc/libvirt/pki";
/// QEMU's TLS credentials for migration, inside the node (QEMU's names:
/// `ca-cert.pem`, `server-cert.pem`, …).
pub const QEMU_TLS_DIR: &str = "/etc/libvirt/pki/qemu";
/// libvirtd's TLS port.
pub const TLS_PORT: u16 = 16514;
/// The organization of every node certificate; `tls_allowed_dn_list`
/// accepts only it.
pub const NODE_ORG: &str = "ironvirt-nodes";

/// The distinguished names a node's libvirtd accepts (as libvirt prints
/// them, `virt-pki-query-dn`: attributes in certificate order; fnmatch
/// patterns): node certificates.
pub fn allowed_dns() -> Vec<String> {
    vec![format!("O={NODE_ORG},CN=*")]
}

/// The certificate of node `name` at `addr`.
pub fn node_leaf(name: &str, addr: Ipv4Addr) -> LeafSpec {
    LeafSpec {
        common_name: name.to_owned(),
        organizations: vec![NODE_ORG.to_owned()],
        dns_names: vec![name.to_owned()],
        ips: vec![IpAddr::V4(addr)],
        usage: Usage::ServerAndClient,
    }
}

/// The URI another node's libvirtd opens to reach node `addr` (its
/// migration target), with this node's client certificate.
pub fn tls_uri(addr: Ipv4Addr) -> String {
    format!("qemu+tls://{addr}/system?pkipath={NODE_PKI_DIR}")
}

/// QEMU's migration URI for node `addr` (the host QEMU's TLS verifies).
pub fn migration_uri(addr: Ipv4Addr) -> String {
    format!("tcp://{addr}")
}

/// libvirtd.conf settings of a node at `addr`.
pub fn libvirtd_conf(addr: Ipv4Addr) -> String {
    let dns: Vec<String> = allowed_dns().iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "# Migration between nodes: TLS only, node certificates only (ironvirt test bed).\n\
         listen_tls = 1\n\
         listen_tcp = 0\n\
         listen_addr = \"{addr}\"\n\
         tls_port = \"{TLS_PORT}\"\n\
         key_file = \"{NODE_PKI_DIR}/serverkey.pem\"\n\
         cert_file = \"{NODE_PKI_DIR}/servercert.pem\"\n\
         ca_file = \"{NODE_PKI_DIR}/cacert.pem\"\n\
         tls_no_verify_certificate = 0\n\
         tls_allowed_dn_list = [{}]\n",
        dns.join(", ")
    )
}

/// qemu.conf settings of a node at `addr`.
pub fn qemu_conf(addr: Ipv4Addr) -> String {
    format!(
        "# Migration between nodes (ironvirt test bed): QEMU's stream over TLS, on the node's address.\n\
         migrate_tls_x509_cert_dir = \"{QEMU_TLS_DIR}\"\n\
         migrate_tls_x509_verify = 1\n\
         migrate_tls_force = 1\n\
         migration_address = \"{addr}\"\n\
         migration_host = \"{addr}\"\n"
    )
}

/// Writes node `name`'s certificate and the CA into its configuration
/// directory `etc` (its /etc/libvirt), in libvirt's and QEMU's names.
pub fn write_node_pki(pki: &Pki, etc: &Path, name: &str, addr: Ipv4Addr) -> Result<(), PkiError> {
    let ca = pki.libvirt_ca()?;
    let pair = ca.issue(&node_leaf(name, addr))?;
    let dir = etc.join("pki");
    let qemu = dir.join("qemu");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { path, source }
    };
    fs::create_dir_all(&qemu).map_err(io(&qemu))?;
    for (d, ca_name, certs, keys) in [
        (
            &dir,
            "cacert.pem",
            ["servercert.pem", "clientcert.pem"],
            ["serverkey.pem", "clientkey.pem"],
        ),
        (
            &qemu,
            "ca-cert.pem",
            ["server-cert.pem", "client-cert.pem"],
            ["server-key.pem", "client-key.pem"],
        ),
    ] {
        let p = d.join(ca_name);
        fs::write(&p, ca.cert_pem()).map_err(io(&p))?;
        for c in certs {
            let p = d.join(c);
            fs::write(&p, &pair.cert_pem).map_err(io(&p))?;
        }
        for k in keys {
            crate::pki::write_private(&d.join(k), &pair.key_pem)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_names_the_node_address_and_tls_only() {
        let a = Ipv4Addr::new(10, 213, 0, 12);
        let l = libvirtd_conf(a);
        assert!(l.contains("listen_tls = 1\nlisten_tcp = 0\n"));
        assert!(l.contains("listen_addr = \"10.213.0.12\""));
        assert!(l.contains("tls_allowed_dn_list = [\"O=ironvirt-nodes,CN=*\"]"));
        let q = qemu_conf(a);
        assert!(q.contains("migrate_tls_x509_verify = 1"));
        assert!(q.contains("migrate_tls_force = 1"));
        assert!(q.contains("migration_address = \"10.213.0.12\""));
        assert_eq!(
            tls_uri(a),
            "qemu+tls://10.213.0.12/system?pkipath=/etc/libvirt/pki"
        );
    }

    #[test]
    fn node_pki_has_libvirt_and_qemu_names() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        let etc = dir.path().join("etc");
        write_node_pki(&pki, &etc, "node-1", Ipv4Addr::new(10, 213, 0, 11)).unwrap();
        for f in [
            "pki/cacert.pem",
            "pki/servercert.pem",
            "pki/serverkey.pem",
            "pki/clientcert.pem",
            "pki/clientkey.pem",
            "pki/qemu/ca-cert.pem",
            "pki/qemu/server-cert.pem",
            "pki/qemu/server-key.pem",
            "pki/qemu/client-cert.pem",
            "pki/qemu/client-key.pem",
        ] {
            assert!(etc.join(f).is_file(), "{f}");
        }
        // One CA for every node, kept across nodes.
        let ca1 = fs::read_to_string(etc.join("pki/cacert.pem")).unwrap();
        let etc2 = dir.path().join("etc2");
        write_node_pki(&pki, &etc2, "node-2", Ipv4Addr::new(10, 213, 0, 12)).unwrap();
        assert_eq!(
            ca1,
            fs::read_to_string(etc2.join("pki/cacert.pem")).unwrap()
        );
        assert_ne!(
            ca1,
            fs::read_to_string(pki.crt(crate::pki::names::CA)).unwrap_or_default()
        );
    }
}
