-- KEYS: lock[, idempotency record]. ARGV: lease id[, '1' to drop a
-- committed record too]. Deletes the lease's copy, and the record when it
-- names this lease and is uncommitted (or ARGV[2] is '1'): an attempt that
-- gives up leaves no record. Returns 1 when the copy was released here,
-- else 0.
local n = 0
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  n = 1
end
if KEYS[2] then
  local r = redis.call('HMGET', KEYS[2], 'l', 'e')
  if r[1] == ARGV[1] and (not r[2] or ARGV[2] == '1') then
    redis.call('DEL', KEYS[2])
  end
end
return n
