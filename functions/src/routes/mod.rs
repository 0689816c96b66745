//! One handler per function, each in its own file holding only its own logic; the route
//! table that binds paths to their operations is [`crate::router`].

pub mod health;
pub mod models;
pub mod predict;

pub use health::Health;
pub use models::Models;
pub use predict::Predict;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod handler_tests;
