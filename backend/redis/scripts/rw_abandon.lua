-- An acquire gives up. ARGV: its queue entry ('' when it never queued),
-- lease id (released if a grant raced with the give-up), wake channel. A
-- writer leaving wakes the readers behind it.
if ARGV[1] ~= '' then
  redis.call('LREM', queue, 0, ARGV[1])
  redis.call('ZREM', beats, ARGV[1])
end
redis.call('HDEL', holders, ARGV[2])
local now = now_ms()
local hs = live(now)
wake(hs, waiters(now), ARGV[3])
return 1
