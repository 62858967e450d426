//! The one integration-test binary (`autotests = false`): each area is a module here.

mod cli;
mod common;
mod sender;
