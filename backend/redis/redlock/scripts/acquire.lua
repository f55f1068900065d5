-- One master's half of a Redlock acquire. KEYS: lock hash, fencing counter,
-- idempotency record (unused without a fingerprint). ARGV: lease id, owner,
-- ttl ms, deadline ms (the client's), idempotency fingerprint ('' for none),
-- record retention ms. Returns
--   {1, token, rt, re, rv, exp, ttl}  granted here (or already held here by
--                            this lease; rt, re, rv: the record's committed
--                            token, expiry ms and validity ms, 0 when
--                            uncommitted; exp, ttl: the copy's when a
--                            renew moved it since the commit, else 0);
--   {0, id, owner, token, deadline}  held here by another lease;
--   {-1, deadline}           this lease's committed grant ended here (deadline:
--                            its copy's as committed, in the client's ms);
--   {-2}                     the key is recorded for another request;
--   {2, lease, held, rt, re, rv, exp, ttl}  the key is recorded under
--                            another lease (held: 1 when it still holds the
--                            lock here; exp, ttl: as above).
local lock, fence, record = KEYS[1], KEYS[2], KEYS[3]
local idem = ARGV[5] or ''
local rt, re, rv = 0, 0, 0
local recorded = false
local renewed = {0, 0}
if idem ~= '' then
  local r = redis.call('HMGET', record, 'f', 'l', 't', 'e', 'v', 'd')
  if r[1] then
    if r[1] ~= idem then return {-2} end
    recorded = true
    rt, re, rv = tonumber(r[3]) or 0, tonumber(r[4]) or 0, tonumber(r[5]) or 0
    local h = redis.call('HMGET', lock, 'id', 'exp', 'ttl')
    if h[1] == r[2] and re > 0 and h[2] ~= r[6] then
      renewed = {tonumber(h[2]) or 0, tonumber(h[3]) or 0}
    end
    if r[2] ~= ARGV[1] then
      if h[1] == r[2] then
        return {2, r[2], 1, rt, re, rv, renewed[1], renewed[2]}
      end
      return {2, r[2], 0, rt, re, rv, 0, 0}
    end
    -- A committed grant is never made again where it ended (released or
    -- expired): that would hand a released lease back.
    if re > 0 and h[1] ~= ARGV[1] then return {-1, tonumber(r[6]) or 0} end
  end
end
local h = redis.call('HMGET', lock, 'id', 'owner', 'token', 'exp', 'ttl')
if h[1] == ARGV[1] then
  if idem ~= '' and re == 0 then
    -- An uncommitted leftover of an earlier attempt, re-run: nobody was
    -- given it, so it now counts from this attempt's start.
    redis.call('HSET', lock, 'exp', ARGV[4], 'ttl', ARGV[3])
    redis.call('PEXPIRE', lock, ARGV[3])
  end
  return {1, tonumber(h[3]), rt, re, rv, renewed[1], renewed[2]}
end
if h[1] then
  return {0, h[1], h[2], tonumber(h[3]), tonumber(h[4])}
end
local token = redis.call('INCR', fence)
redis.call('HSET', lock, 'id', ARGV[1], 'owner', ARGV[2], 'token', token, 'exp', ARGV[4], 'ttl', ARGV[3])
redis.call('PEXPIRE', lock, ARGV[3])
if idem ~= '' then
  if not recorded then
    redis.call('HSET', record, 'f', idem, 'l', ARGV[1])
  end
  redis.call('PEXPIRE', record, ARGV[6])
end
return {1, token, rt, re, rv, 0, 0}
