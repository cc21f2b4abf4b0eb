//! Fetching a prebuilt server: downloading it over http(s) with a progress bar, verifying it
//! against its `.sha256`, and unpacking a `.tar.gz` release.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::locations::SERVER_BINARY;

/// Downloads `url` into `dir` and verifies it against `<url>.sha256`. Nothing is returned
/// unless the checksum matches.
pub fn download(url: &str, dir: &Path) -> Result<PathBuf> {
    crate::http::block_on(download_verified(url, dir))?
}

async fn download_verified(url: &str, dir: &Path) -> Result<PathBuf> {
    let client = crate::http::client(None)?;
    let checksum_url = format!("{url}.sha256");
    let expected = get(&client, &checksum_url)
        .await
        .with_context(|| format!("cannot fetch the checksum {checksum_url}: a download is installed only when its checksum verifies"))?
        .text()
        .await?;
    let expected = parse_checksum(&expected)
        .with_context(|| format!("{checksum_url} holds no SHA-256 checksum"))?;

    let response = get(&client, url)
        .await
        .with_context(|| format!("cannot download {url}"))?;
    println!("Downloading {url}");
    let bar = match response.content_length() {
        Some(length) => ProgressBar::new(length).with_style(
            ProgressStyle::with_template("{wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner(),
    };
    let path = dir.join(file_name(url));
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("the download of {url} broke off"))?;
        hasher.update(&chunk);
        file.write_all(&chunk)?;
        bar.inc(chunk.len() as u64);
    }
    file.sync_all()?;
    bar.finish_and_clear();
    let actual = format!("{:x}", hasher.finalize());
    if actual != expected {
        bail!(
            "the checksum of {url} does not match {checksum_url} (expected {expected}, got {actual}); nothing was installed"
        );
    }
    println!("Verified the SHA-256 checksum of {url}");
    Ok(path)
}

async fn get(client: &reqwest::Client, url: &str) -> Result<reqwest::Response> {
    Ok(client.get(url).send().await?.error_for_status()?)
}

/// Verifies a local file against `<path>.sha256` when there is one.
pub fn verify_local(path: &Path) -> Result<()> {
    let checksum_path = PathBuf::from(format!("{}.sha256", path.display()));
    let Ok(text) = std::fs::read_to_string(&checksum_path) else {
        return Ok(());
    };
    let expected = parse_checksum(&text)
        .with_context(|| format!("{} holds no SHA-256 checksum", checksum_path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    let actual = format!("{:x}", hasher.finalize());
    if actual != expected {
        bail!(
            "the checksum of {} does not match {} (expected {expected}, got {actual}); nothing was installed",
            path.display(),
            checksum_path.display()
        );
    }
    Ok(())
}

/// The digest in a `.sha256` file: its first word (`sha256sum` writes `DIGEST  NAME`).
fn parse_checksum(text: &str) -> Option<String> {
    let digest = text.split_whitespace().next()?.to_ascii_lowercase();
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

fn file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() => name,
        _ => "immutant-server",
    }
}

/// Whether a path or URL names a gzipped tarball.
pub fn is_tarball(name: &str) -> bool {
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

/// Unpacks a release tarball into `dir` and returns the release's root: the folder holding
/// `bin/immutant-server`, at the top of the tarball or one folder down.
pub fn unpack(tarball: &Path, dir: &Path) -> Result<PathBuf> {
    let file = std::fs::File::open(tarball)
        .with_context(|| format!("cannot open {}", tarball.display()))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dir)
        .with_context(|| format!("{} is not a readable .tar.gz", tarball.display()))?;
    let mut candidates = vec![dir.to_path_buf()];
    candidates.extend(std::fs::read_dir(dir)?.flatten().map(|entry| entry.path()));
    candidates
        .into_iter()
        .find(|root| root.join(SERVER_BINARY).is_file())
        .with_context(|| format!("the tarball {} holds no {SERVER_BINARY}", tarball.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_files_are_read_as_sha256sum_writes_them() {
        let digest = "a".repeat(64);
        assert_eq!(
            parse_checksum(&format!("{digest}  server.tar.gz\n")),
            Some(digest.clone())
        );
        assert_eq!(parse_checksum(&digest.to_uppercase()), Some(digest));
        assert_eq!(parse_checksum("not a digest"), None);
        assert_eq!(parse_checksum(""), None);
    }

    #[test]
    fn file_names_come_from_the_url_path() {
        assert_eq!(
            file_name("http://127.0.0.1:1/x/immutant.tar.gz?v=1"),
            "immutant.tar.gz"
        );
        assert_eq!(file_name("http://127.0.0.1:1/"), "immutant-server");
    }
}
