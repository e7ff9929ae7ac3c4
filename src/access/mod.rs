//! Who may reach a route, decided in the guard stage before any identity
//! is checked: IP allow and deny lists (`ip`) and CORS (`cors`).

pub mod cors;
pub mod ip;
