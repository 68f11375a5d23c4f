//! berth-scheduler (skeleton; see ARCHITECTURE.md).
