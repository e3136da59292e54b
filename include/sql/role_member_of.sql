-- Whether role {member} is a member of role {granted} (false when {granted} does not exist). Both literals.
SELECT EXISTS (
  SELECT FROM pg_auth_members m
  JOIN pg_roles g ON g.oid = m.roleid
  JOIN pg_roles u ON u.oid = m.member
  WHERE g.rolname = {granted} AND u.rolname = {member}
);
