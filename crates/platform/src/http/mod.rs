//! HTTP plumbing shared by every listener: problem+json errors, the JSON extractor, request
//! context and access logs, conditional GET, pagination, and the server loop.

pub mod conditional;
pub mod extract;
pub mod json;
pub mod pagination;
pub mod problem;
pub mod request_context;
pub mod server;

pub use extract::{QueryMap, path_id};
pub use json::Json;
pub use pagination::{Page, PageRequest};
pub use problem::{ErrorCode, FieldError, Problem, ProblemBody};
