use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use super::{Guard, Route, loopback, same_secret};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn guard() -> Guard {
    let addr: SocketAddr = "127.0.0.1:8123".parse().unwrap();
    Guard::new(TOKEN.into(), addr)
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

fn ours() -> HeaderMap {
    headers(&[("host", "127.0.0.1:8123")])
}

fn get(path: &str, h: &HeaderMap) -> Result<Route, StatusCode> {
    guard().route(&Method::GET, path, h).map_err(|r| r.status)
}

#[test]
fn the_page_the_assets_and_the_api_need_the_token() {
    let h = ours();
    assert_eq!(get(&format!("/{TOKEN}/"), &h), Ok(Route::Page));
    assert!(matches!(
        get(&format!("/{TOKEN}/app.js"), &h),
        Ok(Route::Asset { .. })
    ));
    assert_eq!(get(&format!("/{TOKEN}/config"), &h), Ok(Route::Config));
    assert_eq!(
        get(
            &format!("/{TOKEN}/k8s/apis/kubevirt.io/v1/namespaces/a/virtualmachines?watch=1"),
            &h
        ),
        Ok(Route::Api(
            "/apis/kubevirt.io/v1/namespaces/a/virtualmachines?watch=1".into()
        ))
    );
    assert_eq!(
        get(&format!("/{TOKEN}/k8s/version"), &h),
        Ok(Route::Api("/version".into()))
    );
    for path in [
        "/".to_string(),
        "/app.js".into(),
        "/k8s/api/v1/namespaces".into(),
        format!("/{}/", &TOKEN[..63]),
        format!("/{TOKEN}x/"),
        format!("/{}/k8s/api/v1/secrets", TOKEN.to_uppercase()),
    ] {
        assert_eq!(get(&path, &h), Err(StatusCode::FORBIDDEN), "{path}");
    }
}

#[test]
fn only_the_kubernetes_api_is_relayed() {
    let h = ours();
    for path in [
        "k8s/",
        "k8s/healthz",
        "k8s/../x",
        "k8s/api/../../etc",
        "k8s/metrics",
        "nope",
    ] {
        assert_eq!(
            get(&format!("/{TOKEN}/{path}"), &h),
            Err(StatusCode::NOT_FOUND),
            "{path}"
        );
    }
    // The page is read-only.
    assert_eq!(
        guard()
            .route(&Method::POST, &format!("/{TOKEN}/"), &h)
            .map_err(|r| r.status),
        Err(StatusCode::NOT_FOUND)
    );
}

#[test]
fn a_foreign_host_origin_or_site_is_refused() {
    let path = format!("/{TOKEN}/k8s/api/v1/namespaces");
    // DNS rebinding: a name that resolves to 127.0.0.1 is still not us.
    assert_eq!(
        get(&path, &headers(&[("host", "evil.example:8123")])),
        Err(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        get(&path, &headers(&[("host", "127.0.0.1:8124")])),
        Err(StatusCode::FORBIDDEN)
    );
    assert_eq!(get(&path, &HeaderMap::new()), Err(StatusCode::FORBIDDEN));
    // Another local web server's page, on another port of the same host.
    for origin in [
        "http://127.0.0.1:8080",
        "http://evil.example",
        "null",
        "https://127.0.0.1:8123",
    ] {
        let mut h = ours();
        h.insert(header::ORIGIN, HeaderValue::from_static(origin));
        assert_eq!(get(&path, &h), Err(StatusCode::FORBIDDEN), "{origin}");
    }
    for site in ["cross-site", "same-site"] {
        let mut h = ours();
        h.insert("sec-fetch-site", HeaderValue::from_static(site));
        assert_eq!(get(&path, &h), Err(StatusCode::FORBIDDEN), "{site}");
    }
    // Our own page, by either name.
    for (host, origin) in [
        ("127.0.0.1:8123", "http://127.0.0.1:8123"),
        ("localhost:8123", "http://localhost:8123"),
    ] {
        let mut h = headers(&[("host", host), ("sec-fetch-site", "same-origin")]);
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        assert!(get(&path, &h).is_ok(), "{host}");
    }
}

#[test]
fn the_url_names_the_address_and_the_token() {
    assert_eq!(guard().url(), format!("http://127.0.0.1:8123/{TOKEN}/"));
    let v6 = Guard::new(TOKEN.into(), "[::1]:9".parse().unwrap());
    assert_eq!(v6.url(), format!("http://[::1]:9/{TOKEN}/"));
}

#[test]
fn only_loopback_addresses_are_served() {
    assert!(loopback("127.0.0.1").is_ok());
    assert!(loopback("::1").is_ok());
    assert!(loopback("[::1]").is_ok());
    assert!(loopback("localhost").is_ok());
    for a in ["0.0.0.0", "10.0.0.1", "::", "example.com"] {
        assert!(loopback(a).is_err(), "{a}");
    }
}

#[test]
fn secrets_compare_whole() {
    assert!(same_secret(b"abc", b"abc"));
    assert!(!same_secret(b"abc", b"abd"));
    assert!(!same_secret(b"abc", b"ab"));
    assert!(!same_secret(b"", b"a"));
}
