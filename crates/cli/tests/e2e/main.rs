//! End-to-end suite: the real `logicore` binary, on port 0, on every database of the run.

mod catalog;
mod cli;
mod lifecycle;
mod outage;
mod relay;
mod support;
