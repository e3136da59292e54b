-- Takes role {granted} away from {role}. Both identifiers.
REVOKE {granted} FROM {role};
