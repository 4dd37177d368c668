"""Federation's services: peerings (operator and peer sides) and the federated catalog."""
