-- An acquire gives up. ARGV: its queue entry ('' when it never queued),
-- lease id (released if a grant raced with the give-up), wake channel. A
-- writer leaving wakes the readers behind it.
if ARGV[1] ~= '' then
  redis.call('LREM', queue, 0, ARGV[1])
  redis.call('ZREM', beats, ARGV[1])
end
local now = now_ms()
local hs = rw_drop(rw_live(now), ARGV[2])
rw_wake(hs, rw_waiters(now), ARGV[3])
return 1
