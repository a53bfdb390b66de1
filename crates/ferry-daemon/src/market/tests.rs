//! Daemon-level market tests.
