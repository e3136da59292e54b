-- The role the cluster's subscription logs in with, on the source.
CREATE ROLE {role} LOGIN REPLICATION;
