"""Transport: event contracts, topology, outbox and relay, intake, inbox, dead letters."""
