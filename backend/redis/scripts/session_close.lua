-- ARGV: wake channel, the session's wake message. Ends an unexpired session
-- and releases each of its grants as release.lua does (logged, the next
-- waiter woken), then tells the session's own waiters, wherever they wait,
-- to look again (they find the session over and leave their queues).
-- Returns 1, or 0 when the session was already over.
local s, set = KEYS[1], KEYS[2]
local now = now_ms()
local e = tonumber(redis.call('HGET', s, 'exp'))
if not e or e <= now then return 0 end
local bases = redis.call('SMEMBERS', set)
redis.call('DEL', s, set)
for _, base in ipairs(bases) do
  use(base)
  local h = redis.call('HMGET', lock, 'id', 'token', 'owner', 'value', 's')
  if h[5] == s then
    redis.call('DEL', lock)
    emit(now, 'r', h[2], h[3], h[4], 0)
    wake(now, ARGV[1])
  end
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
