//! The protocol logic without a network: `Server::handle` with request heads and byte bodies.
