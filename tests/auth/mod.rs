//! Authentication and authorization: what each role may call and read, and the life of a
//! token.

mod roles;
mod tokens;
