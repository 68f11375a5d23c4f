//! berth-agent (skeleton; see ARCHITECTURE.md).
