-- ARGV: wake channel, the session's wake message, the backend's key prefix.
-- Ends an unexpired session and releases each of its grants as a release
-- does (logged, the next waiters woken), then tells the session's own
-- waiters, wherever they wait, to look again (they find the session over
-- and leave their queues). Returns 1, or 0 when the session was already
-- over. The grant set's members are a lock's or an election's base, or a
-- semaphore's or an rwlock's base followed by the grant's lease id
-- (session_member); the grants go while the session still stands, so each
-- is released, not found expired.
local s, set = KEYS[1], KEYS[2]
local now = now_ms()
local e = tonumber(redis.call('HGET', s, 'exp'))
if not e or e <= now then return 0 end
for _, m in ipairs(redis.call('SMEMBERS', set)) do
  local kind, base, id = session_member(m, ARGV[3])
  if kind == 'lock' then
    use(base)
    local h = redis.call('HMGET', lock, 'id', 'token', 'owner', 'value', 's')
    if h[5] == s then
      redis.call('DEL', lock)
      emit(now, 'r', h[2], h[3], h[4], 0)
      wake(now, ARGV[1])
    end
  elseif kind == 'sem' then
    sem_use(base)
    local k = string.match(id, '%.(%d+)$')
    local p = k and load(k)
    if p and p.sess == s and p.secret .. '.' .. k == id then
      clear(k, p)
      wake(now, ARGV[1])
    end
  elseif kind == 'rw' then
    rw_use(base)
    local hs, delays = rw_live(now)
    for _, h in ipairs(hs) do
      if h.id == id and h.sess == s then
        local left = rw_drop(hs, id)
        rw_keep(left, now, delays)
        rw_wake(left, rw_waiters(now), ARGV[1])
        break
      end
    end
  end
end
redis.call('DEL', s, set)
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
