local p, me, id, reg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = p..'id:'..id
local rec = redis.call('HMGET', key, 'node', 'reg')
if rec[1] == me and rec[2] == reg then
  redis.call('DEL', key)
  redis.call('SREM', p..'ids:'..me, id)
  return 1
end
return 0
