//! Progress bars on stderr (indicatif), behind the library's [`drkit::progress`] traits.
//! Hidden when stderr is not a terminal, so logs of scripted runs stay clean.

use std::io::IsTerminal;
use std::sync::Arc;

use drkit::progress::{Progress, ProgressBar};
use indicatif::{MultiProgress, ProgressDrawTarget, ProgressStyle};

pub struct Bars {
    multi: MultiProgress,
}

impl Bars {
    pub fn new(enabled: bool) -> Self {
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Bars {
            multi: MultiProgress::with_draw_target(target),
        }
    }
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bars {
    fn start(&self, label: &str, total: Option<u64>) -> Arc<dyn ProgressBar> {
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template("{msg:24} {bar:30} {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} eta {eta}")
                .expect("valid template"),
        );
        bar.set_message(label.to_string());
        Arc::new(Bar(self.multi.add(bar)))
    }
}

impl ProgressBar for Bar {
    fn inc(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
