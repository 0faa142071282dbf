//! How a plugin call can fail. A trap (or a limit, which traps) is not the
//! same as an error the plugin returns: the first discards the instance, the
//! second is ordinary data.

use crate::config::{Duration, Size};

/// A failed plugin call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access).
    #[error("trapped: {message}")]
    Trap {
        /// The trap and the guest's last stderr line.
        message: String,
    },
    /// The call ran past `limits.time`.
    #[error("ran past its time limit of {limit}")]
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// The guest grew its memory past `limits.memory`.
    #[error("went past its memory limit of {limit}")]
    Memory {
        /// The limit.
        limit: Size,
    },
    /// The call used up `limits.fuel`.
    #[error("used up its fuel ({limit})")]
    Fuel {
        /// The limit.
        limit: u64,
    },
    /// The plugin returned an error: it could not do its job.
    #[error("returned an error: {message}")]
    Returned {
        /// The plugin's message.
        message: String,
    },
    /// The plugin returned something the proxy refuses to use.
    #[error("returned invalid output: {what}")]
    InvalidOutput {
        /// What was wrong.
        what: String,
    },
    /// A new instance could not be made or initialised.
    #[error("could not start an instance: {message}")]
    Instantiate {
        /// Why.
        message: String,
    },
}

impl Failure {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Trap { .. } => "trap",
            Self::Timeout { .. } => "timeout",
            Self::Memory { .. } => "memory",
            Self::Fuel { .. } => "fuel",
            Self::Returned { .. } => "error",
            Self::InvalidOutput { .. } => "invalid-output",
            Self::Instantiate { .. } => "instantiate",
        }
    }

    /// Whether the instance must be thrown away (wasmtime refuses to enter
    /// an instance that trapped, and limits surface as traps).
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            Self::Trap { .. } | Self::Timeout { .. } | Self::Memory { .. } | Self::Fuel { .. }
        )
    }

    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Self::InvalidOutput { what: what.into() }
    }
}
