//! Tests for net_crypto.
