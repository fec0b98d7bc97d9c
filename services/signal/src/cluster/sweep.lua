local p = ARGV[1]
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', p..'qd', '-inf', now, 'LIMIT', 0, 100)
local out = {}
for _, dst in ipairs(due) do
  local q = p..'q:'..dst
  local msgs = redis.call('LRANGE', q, 0, -1)
  redis.call('DEL', q)
  redis.call('ZREM', p..'qd', dst)
  if #msgs > 0 then redis.call('DECRBY', p..'queued', #msgs / 3) end
  local seen, r = {}, {dst}
  for i = 1, #msgs, 3 do
    if not seen[msgs[i]] then
      seen[msgs[i]] = true
      r[#r + 1] = msgs[i]
    end
  end
  out[#out + 1] = r
end
return out
