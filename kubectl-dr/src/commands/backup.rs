//! `kubectl dr backup`: take a backup now, from the CronJob's own template, and follow it.

use std::time::Duration;

use chrono::Utc;
use clap::Args;

use crate::cluster::{jobs, ClusterArgs};

/// Run a backup now: create a Job from the engine's CronJob and follow it to its end.
///
/// The Job is what `kubectl create job --from=cronjob/NAME` creates (same template, owned by
/// the CronJob, annotated as manual), so it runs with exactly the nightly settings. Prints
/// the new backup's id on success.
///
/// Examples:
///   kubectl dr backup postgres                 # the CronJob labelled kube-dr.io/engine=postgres
///   kubectl dr backup kube-dr-vault --no-wait
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct BackupCmd {
    /// An engine name (the CronJob labelled kube-dr.io/engine=NAME, e.g. postgres) or a
    /// CronJob name.
    cronjob: String,

    #[command(flatten)]
    cluster: ClusterArgs,

    /// Create the Job and return without following it.
    #[arg(long)]
    no_wait: bool,

    /// Give up following after this long (the Job keeps running).
    #[arg(long, default_value = "6h", value_name = "DURATION")]
    timeout: humantime::Duration,
}

impl BackupCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.cluster.client().await?;
        let ns = &self.cluster.namespace;
        let cronjob = jobs::find_cronjob(&client, ns, &self.cronjob).await?;
        let job = jobs::job_from_cronjob(&cronjob, Utc::now())?;
        let name = job.metadata.name.clone().unwrap_or_default();
        jobs::create(&client, ns, &job).await?;
        eprintln!(
            "job.batch/{name} created from cronjob/{}",
            cronjob.metadata.name.as_deref().unwrap_or("?")
        );
        if self.no_wait {
            eprintln!("follow it: kubectl -n {ns} logs -f job/{name}");
            return Ok(());
        }
        let outcome = jobs::wait(&client, ns, &name, *self.timeout, Duration::from_secs(2)).await?;
        let logs = jobs::logs(&client, ns, &name).await.unwrap_or_default();
        match outcome {
            jobs::Outcome::Succeeded => {
                // The worker prints the new backup's id as its last stdout line.
                let id = logs
                    .lines()
                    .rev()
                    .find(|l| l.trim().parse::<drkit::catalog::BackupId>().is_ok());
                eprintln!("job.batch/{name} succeeded");
                if let Some(id) = id {
                    drkit::cli::print_line(id.trim())?;
                }
                Ok(())
            }
            jobs::Outcome::Failed(why) => {
                eprintln!("{}", logs.trim_end());
                anyhow::bail!("job.batch/{name} failed ({why}); the log is above; nothing was committed by a failed backup")
            }
        }
    }
}
