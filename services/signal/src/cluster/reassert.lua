local p, me = ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 3 do
  local id, token, reg = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = p..'id:'..id
  local owner = redis.call('HGET', key, 'node')
  if owner and owner ~= me and redis.call('EXISTS', p..'node:'..owner) == 1 then
    out[#out + 1] = {'lost', id}
  else
    if owner and owner ~= me then redis.call('SREM', p..'ids:'..owner, id) end
    redis.call('HSET', key, 'node', me, 'token', token, 'reg', reg)
    redis.call('SADD', p..'ids:'..me..':new', id)
    local q = p..'q:'..id
    local msgs = redis.call('LRANGE', q, 0, -1)
    if #msgs > 0 then
      redis.call('DEL', q)
      redis.call('ZREM', p..'qd', id)
      redis.call('DECRBY', p..'queued', #msgs / 3)
      local r = {'queued', id}
      for _, m in ipairs(msgs) do r[#r + 1] = m end
      out[#out + 1] = r
    end
  end
end
return out
