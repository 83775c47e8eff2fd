//! The agent's HTTP(S) API, served to the conductor (IPA's routes, codes and JSON shapes).

pub mod limits;
pub mod routes;
pub mod server;
