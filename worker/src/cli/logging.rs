//! The binaries' logs: text for people or one JSON document per line, on stderr, with the
//! AWS credential chain's noise left out.

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON document.
    Json,
    /// Aligned columns for people.
    Text,
}

/// Logs to stderr; `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat, default_level: &str) {
    init_logging_to(format, default_level, std::io::stderr);
}

/// [`init_logging`] through `writer` (e.g. a [`crate::observe::tail::LogTail`], which
/// writes to stderr and keeps the end for the ping).
pub fn init_logging_to<W>(format: LogFormat, default_level: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    // The AWS credential chain warns with a raw struct dump for each provider it tries
    // (IMDS on a laptop); the store's own error says what to set in one sentence.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default_level},aws_config=error"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // No `target` field: it would be tracing's module path, and in this tool `target`
    // means the backup's --target (log lines name it inside `backup`).
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_target(false).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}
