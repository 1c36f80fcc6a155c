//! BGP speaker toward the fabric: sessions, EVPN type-5 codec, Adj-RIB-In/Out.
