//! The S3 side of the tests: a client for the services' S3 server, and the check that no
//! multipart upload was left behind.

use super::*;

/// An S3 client for the test server (or any endpoint, e.g. a closed port).
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{
        Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    };
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(Region::new(svc("AWS_REGION")))
        .credentials_provider(Credentials::new(
            svc("AWS_ACCESS_KEY_ID"),
            svc("AWS_SECRET_ACCESS_KEY"),
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Multipart uploads in progress on the test S3 server: s3s-fs keeps one
/// `.upload-<id>.json` per upload in its data root until it is completed or aborted.
pub fn s3_uploads() -> std::collections::HashSet<String> {
    let root = PathBuf::from(svc("DR_SERVICES_DIR")).join("s3/data");
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".upload-") && n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

/// Fails unless every multipart upload that appeared after `before` was taken is completed
/// or aborted within 30 s. Uploads of tests running in parallel finish quickly; a leaked one
/// never does.
pub async fn assert_no_upload_leaked(before: &std::collections::HashSet<String>) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let leaked: Vec<String> = s3_uploads().difference(before).cloned().collect();
        if leaked.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "multipart uploads left behind: {leaked:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
