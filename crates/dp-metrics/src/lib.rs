//! dp-metrics
