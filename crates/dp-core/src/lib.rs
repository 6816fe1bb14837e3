//! dp-core
