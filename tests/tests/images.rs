//! The containerDisk puller against a real registry: Debian's
//! `docker-registry` (CNCF distribution 2.8), started here on 127.0.0.1 over
//! plain HTTP ([`ironvirt_tests::registry`]). Images are built and pushed by
//! the test in KubeVirt's layout (`/disk/disk.qcow2`, uid 107).

use ironvirt_handler::domxml::ImageFormat;
use ironvirt_handler::images::{ImageError, ImageRef, Images, PullPolicy, Registries, Wanted};
use ironvirt_tests::registry::{Files, Registry, qcow2};
use oci_client::secrets::RegistryAuth;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn mirrors(host: &str) -> Registries {
    Registries::parse(&format!(
        "registries:\n  quay.io:\n    mirrors: [\"{host}\"]\n  \"{host}\":\n    insecure: true\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[tokio::test]
async fn a_containerdisk_is_pulled_once_checked_and_cached() -> Res<()> {
    let reg = Registry::start()?;
    let disk = qcow2(None)?;
    reg.push(
        "kubevirt/cirros-container-disk-demo:devel",
        &[("disk/disk.qcow2", disk.clone())],
    )
    .await?;
    let cache = tempfile::tempdir()?;
    let images = Images::open(cache.path(), mirrors(&reg.host))?;
    // KubeVirt's documentation names quay.io; the node's mirror serves it.
    let cirros = image("quay.io/kubevirt/cirros-container-disk-demo:devel");
    let wanted = Wanted::of(None)?;
    let policy = PullPolicy::of(None, &cirros)?;
    assert_eq!(policy, PullPolicy::IfNotPresent);
    let auth = RegistryAuth::Anonymous;
    let got = images
        .ensure(&cirros, &wanted, policy, &auth, "vmi-a")
        .await?;
    assert_eq!(got.format, ImageFormat::Qcow2);
    assert_eq!(
        std::fs::read(&got.path)?,
        disk,
        "the disk is the pushed file"
    );
    let blobs = reg.requests("/blobs/");
    let manifests = reg.requests("/manifests/");
    assert!(blobs >= 1 && manifests >= 1, "pulled from the mirror");

    // Two VMIs at once: one answer from the cache, no second download.
    let (a, b) = tokio::join!(
        images.ensure(&cirros, &wanted, policy, &auth, "vmi-a"),
        images.ensure(&cirros, &wanted, policy, &auth, "vmi-a")
    );
    assert_eq!(a?.path, got.path);
    assert_eq!(b?.path, got.path);
    assert_eq!(
        reg.requests("/manifests/"),
        manifests,
        "IfNotPresent asked again"
    );

    // Always: the registry is asked for the manifest, but an unchanged
    // digest downloads nothing.
    let again = images
        .ensure(&cirros, &wanted, PullPolicy::Always, &auth, "vmi-a")
        .await?;
    assert_eq!(again.path, got.path);
    assert!(reg.requests("/manifests/") > manifests);
    assert_eq!(
        reg.requests("/blobs/"),
        blobs,
        "an unchanged image was downloaded again"
    );

    // A handler restart finds the cache; Never needs nothing else.
    drop(images);
    let reopened = Images::open(cache.path(), mirrors(&reg.host))?;
    let never = reopened
        .ensure(&cirros, &wanted, PullPolicy::Never, &auth, "vmi-a")
        .await?;
    assert_eq!(never.path, got.path);
    let missing = reopened
        .ensure(
            &image("quay.io/kubevirt/other:v1"),
            &wanted,
            PullPolicy::Never,
            &auth,
            "vmi-a",
        )
        .await;
    assert!(
        matches!(missing, Err(ImageError::NotPresent(_))),
        "{missing:?}"
    );

    // The VMI goes: with a limit of 0 the unused image is collected, and
    // nothing of it is left; Never then finds nothing.
    reopened.release("vmi-a")?;
    let c = reopened.collect(0, std::time::Duration::ZERO)?;
    assert_eq!(c.removed.len(), 1, "{c:?}");
    assert_eq!(std::fs::read_dir(cache.path().join("images"))?.count(), 0);
    let gone = reopened
        .ensure(&cirros, &wanted, PullPolicy::Never, &auth, "vmi-b")
        .await;
    assert!(matches!(gone, Err(ImageError::NotPresent(_))), "{gone:?}");
    Ok(())
}

#[tokio::test]
async fn a_missing_tag_fails_with_the_registrys_reason_until_it_is_pushed() -> Res<()> {
    let reg = Registry::start()?;
    let cache = tempfile::tempdir()?;
    let images = Images::open(cache.path(), mirrors(&reg.host))?;
    let later = image(&format!("{}/kubevirt/later:v2", reg.host));
    let wanted = Wanted::of(None)?;
    let auth = RegistryAuth::Anonymous;
    let e = images
        .ensure(&later, &wanted, PullPolicy::IfNotPresent, &auth, "vmi-a")
        .await
        .expect_err("pulled a tag that does not exist");
    let text = e.to_string();
    assert!(matches!(e, ImageError::Pull { .. }), "{text}");
    assert!(text.to_lowercase().contains("manifest unknown"), "{text}");
    reg.push("kubevirt/later:v2", &[("disk/disk.img", vec![0u8; 4096])])
        .await?;
    let got = images
        .ensure(&later, &wanted, PullPolicy::IfNotPresent, &auth, "vmi-a")
        .await?;
    assert_eq!(got.format, ImageFormat::Raw);
    Ok(())
}

#[tokio::test]
async fn bad_images_are_refused_with_kubevirts_reasons() -> Res<()> {
    let reg = Registry::start()?;
    let backing = tempfile::NamedTempFile::new()?;
    backing.as_file().set_len(1 << 20)?;
    let cases: Vec<(&str, Files, &str)> = vec![
        (
            "bad/none:1",
            vec![("etc/hostname", b"x".to_vec())],
            "no file found in folder /disk, no disk present",
        ),
        (
            "bad/two:1",
            vec![
                ("disk/a.qcow2", qcow2(None)?),
                ("disk/b.qcow2", qcow2(None)?),
            ],
            "more than one file found in folder /disk, only one disk is allowed",
        ),
        (
            "bad/backing:1",
            vec![("disk/disk.qcow2", qcow2(Some(backing.path()))?)],
            "backing file",
        ),
    ];
    let cache = tempfile::tempdir()?;
    let images = Images::open(cache.path(), mirrors(&reg.host))?;
    for (name, files, reason) in cases {
        reg.push(name, &files).await?;
        let r = image(&format!("{}/{name}", reg.host));
        let e = images
            .ensure(
                &r,
                &Wanted::of(None)?,
                PullPolicy::IfNotPresent,
                &RegistryAuth::Anonymous,
                "vmi-a",
            )
            .await
            .expect_err(name);
        assert!(matches!(e, ImageError::BadImage(_)), "{name}: {e}");
        assert!(e.to_string().contains(reason), "{name}: {e}");
    }
    // Nothing of the refused images stays in the cache.
    let left: Vec<_> = std::fs::read_dir(cache.path().join("images"))?.collect();
    assert!(left.is_empty(), "{left:?}");
    let mut tmp = std::fs::read_dir(cache.path().join("tmp"))?;
    assert!(tmp.next().is_none(), "downloads left behind");
    Ok(())
}

#[tokio::test]
async fn a_private_registry_over_tls_needs_its_credentials_and_ca() -> Res<()> {
    let reg = Registry::start_private("puller", "s3cret")?;
    reg.push("private/guest:v1", &[("disk/disk.qcow2", qcow2(None)?)])
        .await?;
    let ca = reg.ca.clone().ok_or("a CA")?;
    let cache = tempfile::tempdir()?;
    let config = Registries::parse(&format!(
        "registries:\n  \"{}\":\n    ca: {}\n",
        reg.host,
        ca.display()
    ))?;
    let images = Images::open(cache.path(), config)?;
    let private = image(&format!("{}/private/guest:v1", reg.host));
    let wanted = Wanted::of(None)?;
    let p = PullPolicy::IfNotPresent;
    // Anonymous: the registry's 401 is the reason.
    let e = images
        .ensure(&private, &wanted, p, &RegistryAuth::Anonymous, "vmi-a")
        .await
        .expect_err("pulled a private image anonymously");
    let text = e.to_string().to_lowercase();
    assert!(text.contains("not authorized"), "{e}");
    // Wrong password: refused too.
    let wrong = RegistryAuth::Basic("puller".into(), "guess".into());
    assert!(
        images
            .ensure(&private, &wanted, p, &wrong, "vmi-a")
            .await
            .is_err()
    );
    // The right credentials, from a Docker config as a pull secret holds them.
    let json = format!(
        r#"{{"auths":{{"{}":{{"username":"puller","password":"s3cret"}}}}}}"#,
        reg.host
    );
    let auth = ironvirt_handler::images::docker_config_auth(json.as_bytes(), &reg.host)?;
    let got = images.ensure(&private, &wanted, p, &auth, "vmi-a").await?;
    assert_eq!(got.format, ImageFormat::Qcow2);
    // Now on the node: another tenant without the credentials still gets
    // the registry's refusal, not the cached copy, even with Never.
    let e = images
        .ensure(&private, &wanted, p, &RegistryAuth::Anonymous, "vmi-b")
        .await
        .expect_err("a private image was served from the cache without credentials");
    assert!(
        e.to_string().to_lowercase().contains("not authorized"),
        "{e}"
    );
    let never = images
        .ensure(&private, &wanted, PullPolicy::Never, &wrong, "vmi-b")
        .await;
    assert!(
        never.is_err(),
        "Never served a private image to other credentials"
    );
    // The credentials that got it get it again from the cache.
    assert_eq!(
        images
            .ensure(&private, &wanted, PullPolicy::Never, &auth, "vmi-c")
            .await?
            .path,
        got.path
    );
    // Without the CA, the registry's certificate is not trusted.
    let untrusted = Images::open(tempfile::tempdir()?.path(), Registries::default())?;
    let e = untrusted
        .ensure(&private, &wanted, p, &auth, "vmi-a")
        .await
        .expect_err("trusted a certificate of an unknown CA");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    Ok(())
}
