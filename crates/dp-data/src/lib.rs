//! dp-data
