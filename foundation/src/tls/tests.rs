//! The certificates' checks, choice and reloads, on files made in each test.

use super::*;

/// Writes a certificate for `names` valid from `from` to `until` (days from now), and its
/// key (mode 600), into `dir` as `stem.crt` and `stem.key`.
fn write_pair(dir: &Path, stem: &str, names: &[&str], from: i64, until: i64) -> CertificateFiles {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(until);
    let certificate = params.self_signed(&key).unwrap();
    let files = CertificateFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&files.cert, certificate.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    files
}

#[test]
fn certificates_are_chosen_by_name_then_wildcard_then_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_pair(dir.path(), "first", &["shop.example"], -1, 90);
    let blog = write_pair(
        dir.path(),
        "blog",
        &["blog.example", "*.blog.example"],
        -1,
        90,
    );
    let certificates = Certificates::load(vec![first.clone(), blog.clone()]).unwrap();
    assert_eq!(
        chosen_for(&certificates, "blog.example"),
        Some(blog.cert.clone())
    );
    assert_eq!(
        chosen_for(&certificates, "www.blog.example"),
        Some(blog.cert.clone())
    );
    assert_eq!(
        chosen_for(&certificates, "shop.example"),
        Some(first.cert.clone())
    );
    assert_eq!(chosen_for(&certificates, "a.b.blog.example"), None);
    let report = certificates.report();
    assert_eq!(report[1].names, ["blog.example", "*.blog.example"]);
    assert!((88..=90).contains(&report[0].days_left), "{report:?}");
}

#[test]
fn every_bad_certificate_is_refused_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_pair(dir.path(), "good", &["a.example"], -1, 90);
    let expired = write_pair(dir.path(), "expired", &["a.example"], -90, -1);
    let early = write_pair(dir.path(), "early", &["a.example"], 2, 90);
    let other = write_pair(dir.path(), "other", &["a.example"], -1, 90);
    let refused = |files: CertificateFiles| Certificates::load(vec![files]).unwrap_err();
    let missing = CertificateFiles {
        cert: dir.path().join("missing.crt"),
        key: good.key.clone(),
    };
    assert!(matches!(
        refused(missing),
        CertificateError::Unreadable {
            what: "certificate",
            ..
        }
    ));
    assert!(matches!(
        refused(expired.clone()),
        CertificateError::Expired { .. }
    ));
    assert!(
        refused(expired)
            .to_string()
            .contains("expired.crt expired on")
    );
    assert!(matches!(
        refused(early),
        CertificateError::NotYetValid { .. }
    ));
    let mismatched = CertificateFiles {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    assert!(matches!(
        refused(mismatched),
        CertificateError::Mismatch { .. }
    ));
    std::fs::set_permissions(&good.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let exposed = refused(good.clone()).to_string();
    assert!(
        exposed.contains("(mode 644)") && exposed.contains("chmod 600"),
        "{exposed}"
    );
    std::fs::set_permissions(&good.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&good.cert, "not a certificate").unwrap();
    assert!(matches!(refused(good), CertificateError::Empty { .. }));
}

#[test]
fn a_reload_that_fails_keeps_what_was_served() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_pair(dir.path(), "site", &["old.example"], -1, 90);
    let certificates = Certificates::load(vec![files.clone()]).unwrap();
    std::fs::write(&files.cert, "broken").unwrap();
    let (read, failed) = certificates.reload(false);
    assert!(read.is_empty() && failed.len() == 1, "{failed:?}");
    assert_eq!(certificates.report()[0].names, ["old.example"]);
    write_pair(dir.path(), "site", &["new.example"], -1, 90);
    let (read, failed) = certificates.reload(false);
    assert!(read == ["new.example"] && failed.is_empty(), "{failed:?}");
    assert_eq!(certificates.report()[0].names, ["new.example"]);
    // Unchanged files are not read again.
    let (read, failed) = certificates.reload(false);
    assert!(read.is_empty() && failed.is_empty());
}

#[test]
fn a_pair_that_fails_keeps_its_certificate_and_the_others_go_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let shop = write_pair(dir.path(), "shop", &["shop.example"], -1, 90);
    let blog = write_pair(dir.path(), "blog", &["blog.example"], -1, 90);
    let certificates = Certificates::load(vec![shop.clone(), blog.clone()]).unwrap();
    write_pair(dir.path(), "shop", &["new.shop.example"], -1, 90);
    std::fs::write(&blog.cert, "broken").unwrap();
    let (read, failed) = certificates.reload(false);
    assert_eq!(read, ["new.shop.example"]);
    assert!(
        matches!(failed[..], [CertificateError::Empty { .. }]),
        "{failed:?}"
    );
    let names: Vec<_> = certificates.report().into_iter().map(|c| c.names).collect();
    assert_eq!(names, [["new.shop.example"], ["blog.example"]]);
}

/// The file of the certificate [`choose`] picks for `name`, if one names it.
fn chosen_for(certificates: &Certificates, name: &str) -> Option<PathBuf> {
    let current = certificates.current();
    choose(&current, name).map(|served| served.files.cert.clone())
}
