//! Authentication building blocks shared by services: password hashing (and, with the users
//! service, token signing and verification).

pub mod password;
pub mod signing;
