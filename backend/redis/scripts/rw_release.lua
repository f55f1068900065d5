-- ARGV: lease id, wake channel. Returns 1 when released, 0 when the lease
-- holds nothing (expired — inside its lock-delay too, which stays —,
-- released, unknown). Wakes whoever may go now.
local now = now_ms()
local hs, delays = rw_live(now)
local held = false
for _, h in ipairs(hs) do
  if h.id == ARGV[1] then held = true end
end
if not held then return 0 end
local left = rw_drop(hs, ARGV[1])
rw_keep(left, now, delays)
rw_wake(left, rw_waiters(now), ARGV[2])
return 1
