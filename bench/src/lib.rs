//! berth-bench: benchmark harnesses that compare Berth with its anchors in the same run.
