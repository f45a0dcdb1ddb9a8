-- Party line membership with the node of each member, kept in join order.
-- Per line R: HASH <p>:pl:{R} member -> node; ZSET <p>:pl:{R}:o member -> join sequence;
-- STRING <p>:pl:{R}:s the sequence; HASH <p>:pl:{R}:n node -> members on it.
-- Per node N: SET <p>:pln:{N} of "R\nmember", for dropping a node.
-- The cluster's party lines (enter, quit) keep two more per line: HASH <p>:pl:{R}:i member ->
-- "node epoch address" and STRING <p>:pl:{R}:name (the name as its creator wrote it), and number
-- every enter and quit from one counter, STRING <p>:plseq, so that a node can tell which of its
-- members heard of which change.
-- ARGV[1] is the operation, ARGV[2] the key prefix <p>; no KEYS (the keys derive from the arguments,
-- so this script needs a single Redis primary, as the directory's sweep does).
--   join R member node  -> 1 if the member was added or moved, 0 if it was there on that node
--   leave R member      -> 1 if the member left, 0 if it was not there
--   members R           -> flat list member, node, ... in join order
--   drop node batch     -> {removed, entries left in the node's set}
--   enter R member node epoch address name create max taken... -> one of
--       {'joined', seq, name, member, info, seq, ...}  (every member in join order, the new one last)
--       {'again', seq, name, member, info, seq, ...}   (already a member: nothing changed)
--       {'address_in_use'} (no such line and a key in `taken` exists), {'no_such_party'} (no such line
--       and create is not '1'), {'party_full'} (max members already)
--   quit R member       -> {0} if not a member, else {1, seq, node, node, ...} (the nodes still holding
--       members)
local op, p = ARGV[1], ARGV[2]

local function line(r)
  local base = p .. ':pl:{' .. r .. '}'
  return base, base .. ':o', base .. ':s', base .. ':n'
end

local function remove(r, member, node)
  local members, order, seq, counts = line(r)
  redis.call('HDEL', members, member)
  redis.call('HDEL', members .. ':i', member)
  redis.call('ZREM', order, member)
  if redis.call('HINCRBY', counts, node, -1) <= 0 then
    redis.call('HDEL', counts, node)
  end
  redis.call('SREM', p .. ':pln:{' .. node .. '}', r .. '\n' .. member)
  if redis.call('HLEN', members) == 0 then
    redis.call('DEL', order, seq, counts, members .. ':i', members .. ':name')
  end
end

local function listing(status, seq, r)
  local members, order = line(r)
  local info = members .. ':i'
  local out = {status, seq, redis.call('GET', members .. ':name') or r}
  local ranked = redis.call('ZRANGE', order, 0, -1, 'WITHSCORES')
  for i = 1, #ranked, 2 do
    local m = ranked[i]
    local about = redis.call('HGET', info, m)
    if about then
      out[#out + 1] = m
      out[#out + 1] = about
      out[#out + 1] = tonumber(ranked[i + 1])
    end
  end
  return out
end

if op == 'join' then
  local r, member, node = ARGV[3], ARGV[4], ARGV[5]
  local members, order, seq, counts = line(r)
  local old = redis.call('HGET', members, member)
  if old == node then
    return 0
  end
  if old then
    if redis.call('HINCRBY', counts, old, -1) <= 0 then
      redis.call('HDEL', counts, old)
    end
    redis.call('SREM', p .. ':pln:{' .. old .. '}', r .. '\n' .. member)
  else
    redis.call('ZADD', order, redis.call('INCR', seq), member)
  end
  redis.call('HSET', members, member, node)
  redis.call('HINCRBY', counts, node, 1)
  redis.call('SADD', p .. ':pln:{' .. node .. '}', r .. '\n' .. member)
  return 1
elseif op == 'leave' then
  local r, member = ARGV[3], ARGV[4]
  local members = line(r)
  local node = redis.call('HGET', members, member)
  if not node then
    return 0
  end
  remove(r, member, node)
  return 1
elseif op == 'members' then
  local members, order = line(ARGV[3])
  local out = {}
  for _, member in ipairs(redis.call('ZRANGE', order, 0, -1)) do
    local node = redis.call('HGET', members, member)
    if node then
      out[#out + 1] = member
      out[#out + 1] = node
    end
  end
  return out
elseif op == 'drop' then
  local node, batch = ARGV[3], tonumber(ARGV[4])
  local index = p .. ':pln:{' .. node .. '}'
  local removed = 0
  for _, entry in ipairs(redis.call('SPOP', index, batch)) do
    local cut = string.find(entry, '\n', 1, true)
    if cut then
      local r, member = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
      local members = line(r)
      if redis.call('HGET', members, member) == node then
        remove(r, member, node)
        removed = removed + 1
      end
    end
  end
  return {removed, redis.call('SCARD', index)}
elseif op == 'enter' then
  local r, member, node, epoch, address = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local name, create, max = ARGV[8], ARGV[9], tonumber(ARGV[10])
  local members, order, seq, counts = line(r)
  if redis.call('HEXISTS', members, member) == 1 then
    return listing('again', tonumber(redis.call('ZSCORE', order, member)), r)
  end
  local size = redis.call('HLEN', members)
  if size == 0 then
    for i = 11, #ARGV do
      if redis.call('EXISTS', ARGV[i]) == 1 then
        return {'address_in_use'}
      end
    end
    if create ~= '1' then
      return {'no_such_party'}
    end
    redis.call('SET', members .. ':name', name)
  elseif size >= max then
    return {'party_full'}
  end
  local n = redis.call('INCR', p .. ':plseq')
  redis.call('ZADD', order, n, member)
  redis.call('HSET', members, member, node)
  redis.call('HSET', members .. ':i', member, node .. ' ' .. epoch .. ' ' .. address)
  redis.call('HINCRBY', counts, node, 1)
  redis.call('SADD', p .. ':pln:{' .. node .. '}', r .. '\n' .. member)
  return listing('joined', n, r)
elseif op == 'quit' then
  local r, member = ARGV[3], ARGV[4]
  local members, order, seq, counts = line(r)
  local node = redis.call('HGET', members, member)
  if not node then
    return {0}
  end
  remove(r, member, node)
  local out = {1, redis.call('INCR', p .. ':plseq')}
  for _, n in ipairs(redis.call('HKEYS', counts)) do
    out[#out + 1] = n
  end
  return out
end
return redis.error_reply('roster: unknown operation ' .. tostring(op))
