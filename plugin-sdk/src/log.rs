//! Logging into the proxy's logs, tagged with the plugin and route.

use crate::bindings::imports::plumeway::plugin::log as wit;

/// How important a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// For debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// Whether a message at `level` would be kept; check before building an
/// expensive one (the log macros do).
pub fn enabled(level: Level) -> bool {
    if cfg!(target_arch = "wasm32") {
        wit::enabled(level.into())
    } else {
        true
    }
}

/// Logs `message` at `level`. Outside plumeway (unit tests) it goes to stderr.
pub fn log(level: Level, message: &str) {
    if cfg!(target_arch = "wasm32") {
        wit::log(level.into(), message);
    } else {
        eprintln!("[{level:?}] {message}");
    }
}

impl From<Level> for wit::Level {
    fn from(l: Level) -> Self {
        match l {
            Level::Trace => Self::Trace,
            Level::Debug => Self::Debug,
            Level::Info => Self::Info,
            Level::Warn => Self::Warn,
            Level::Error => Self::Error,
        }
    }
}

/// Logs at info level, `format!`-style: `plumeway_sdk::info!("saw {n} headers")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::__log!($crate::log::Level::Info, $($arg)*) };
}

/// Logs at warn level, `format!`-style.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::__log!($crate::log::Level::Warn, $($arg)*) };
}

/// Logs at debug level, `format!`-style.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::__log!($crate::log::Level::Debug, $($arg)*) };
}

/// Logs at error level, `format!`-style.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::__log!($crate::log::Level::Error, $($arg)*) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::log($level, &::std::format!($($arg)*));
        }
    };
}
