-- The cluster's subscription; creates its slot on the source. {conninfo}: a literal.
CREATE SUBSCRIPTION {subscription} CONNECTION {conninfo} PUBLICATION {publication};
